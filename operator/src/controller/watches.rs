//! Watches that follow the operator's [`WatchScope`]: cluster-wide (`Api::all`) when it
//! watches every namespace, one watch per namespace merged into one stream per kind when it
//! watches a list, so that Roles in those namespaces are all the access it needs. Does I/O
//! (Kubernetes watches); [`ListingMerge`], which keeps one cache correct across several
//! namespaces' watches, is pure.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::scope::WatchScope;

/// Bounds of every kind the operator watches.
pub(super) trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Watched for K where K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {}

/// The controller of kind `K`, with the cache of every `K` in scope.
pub(super) fn controller<K>(client: &Client, scope: &WatchScope, config: watcher::Config) -> Controller<K>
where
    K: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        WatchScope::All => Controller::new(Api::<K>::all(client.clone()), config),
        WatchScope::Namespaces(namespaces) => {
            let (reader, writer) = reflector::store();
            let trigger = reflector::reflector(writer, merged_events(client, namespaces, config)).applied_objects();
            Controller::for_stream(trigger, reader)
        }
    }
}

/// A cache of every `K` in scope, kept by a reflector in the background.
pub(super) fn cache<K>(client: &Client, scope: &WatchScope, config: watcher::Config) -> Store<K>
where
    K: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        WatchScope::All => super::spawn_cache(Api::<K>::all(client.clone()), config),
        WatchScope::Namespaces(namespaces) => {
            let (reader, writer) = reflector::store();
            let stream = reflector::reflector(writer, merged_events(client, namespaces, config)).touched_objects();
            tokio::spawn(stream.for_each(|_| futures::future::ready(())));
            reader
        }
    }
}

/// Triggers of a controller that follow the scope.
pub(super) trait ScopedTriggers<K: Watched>: Sized {
    /// Reconciles the owner of every `Child` in scope that changes (`Controller::owns`).
    fn owns_in<Child>(self, client: &Client, scope: &WatchScope, config: watcher::Config) -> Self
    where
        Child: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>;

    /// Reconciles what `mapper` names for every `Other` in scope that changes
    /// (`Controller::watches`).
    fn watches_in<Other, I>(
        self,
        client: &Client,
        scope: &WatchScope,
        config: watcher::Config,
        mapper: impl Fn(Other) -> I + Sync + Send + 'static,
    ) -> Self
    where
        Other: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        I: 'static + IntoIterator<Item = ObjectRef<K>>,
        I::IntoIter: Send;

    /// [`Self::watches_in`] on the metadata of `Other` only: for kinds whose contents the
    /// operator must not hold in memory or pass around (Secrets).
    fn watches_metadata_in<Other, I>(
        self,
        client: &Client,
        scope: &WatchScope,
        mapper: impl Fn(PartialObjectMeta<Other>) -> I + Sync + Send + 'static,
    ) -> Self
    where
        Other: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        I: 'static + IntoIterator<Item = ObjectRef<K>>,
        I::IntoIter: Send;
}

impl<K: Watched> ScopedTriggers<K> for Controller<K> {
    fn owns_in<Child>(self, client: &Client, scope: &WatchScope, config: watcher::Config) -> Self
    where
        Child: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match scope {
            WatchScope::All => self.owns(Api::<Child>::all(client.clone()), config),
            WatchScope::Namespaces(namespaces) => {
                // Owner references are in the metadata: watch only that, as `owns` does.
                let streams = namespaces.iter().map(|namespace| {
                    let api = Api::<PartialObjectMeta<Child>>::namespaced(client.clone(), namespace);
                    watcher(api, config.clone()).default_backoff().touched_objects().boxed()
                });
                self.owns_stream(futures::stream::select_all(streams))
            }
        }
    }

    fn watches_in<Other, I>(
        self,
        client: &Client,
        scope: &WatchScope,
        config: watcher::Config,
        mapper: impl Fn(Other) -> I + Sync + Send + 'static,
    ) -> Self
    where
        Other: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        I: 'static + IntoIterator<Item = ObjectRef<K>>,
        I::IntoIter: Send,
    {
        match scope {
            WatchScope::All => self.watches(Api::<Other>::all(client.clone()), config, mapper),
            WatchScope::Namespaces(namespaces) => {
                let streams = namespaces.iter().map(|namespace| {
                    let api = Api::<Other>::namespaced(client.clone(), namespace);
                    watcher(api, config.clone()).default_backoff().touched_objects().boxed()
                });
                self.watches_stream(futures::stream::select_all(streams), mapper)
            }
        }
    }

    fn watches_metadata_in<Other, I>(
        self,
        client: &Client,
        scope: &WatchScope,
        mapper: impl Fn(PartialObjectMeta<Other>) -> I + Sync + Send + 'static,
    ) -> Self
    where
        Other: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        I: 'static + IntoIterator<Item = ObjectRef<K>>,
        I::IntoIter: Send,
    {
        // `Api<PartialObjectMeta<_>>` asks the apiserver for metadata only.
        let apis = match scope {
            WatchScope::All => vec![Api::<PartialObjectMeta<Other>>::all(client.clone())],
            WatchScope::Namespaces(namespaces) => namespaces
                .iter()
                .map(|namespace| Api::<PartialObjectMeta<Other>>::namespaced(client.clone(), namespace))
                .collect(),
        };
        let streams = apis
            .into_iter()
            .map(|api| watcher(api, watcher::Config::default()).default_backoff().touched_objects().boxed());
        self.watches_stream(futures::stream::select_all(streams), mapper)
    }
}

/// The events of one watch per namespace, merged so that one reflector keeps one cache of
/// them all (see [`ListingMerge`]).
fn merged_events<K>(
    client: &Client,
    namespaces: &[String],
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Watched + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
{
    let streams: Vec<BoxStream<'static, (String, watcher::Result<watcher::Event<K>>)>> = namespaces
        .iter()
        .map(|namespace| {
            let api = Api::<K>::namespaced(client.clone(), namespace);
            let tag = namespace.clone();
            // Backoff per namespace: one whose Role is missing (kube's watcher logs its 403s)
            // is retried on its own schedule, not in a tight loop.
            watcher(api, config.clone()).default_backoff().map(move |event| (tag.clone(), event)).boxed()
        })
        .collect();
    let mut merge = ListingMerge::new(namespaces);
    futures::stream::select_all(streams).flat_map(move |(namespace, result)| {
        let events: Vec<watcher::Result<watcher::Event<K>>> = match result {
            Ok(event) => merge.on_event(&namespace, event).into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        };
        futures::stream::iter(events)
    })
}

/// Turns the events of several namespaces' watches into events for one cache.
///
/// A reflector's cache is replaced wholesale at the end of every (re)list (`InitDone`), so
/// feeding it two namespaces' watches as they are would let one namespace's re-list, after a
/// dropped connection, erase the other's objects. Instead: the first lists of all namespaces
/// are gathered and handed over as one list (so the cache is ready, as with a cluster-wide
/// watch, only when every namespace has been listed); after that a namespace's re-list
/// becomes `Apply` for what it lists and `Delete` for what it no longer lists, which touches
/// that namespace only. It keeps a copy of the objects it has passed on, to know what a
/// re-list dropped.
pub(super) struct ListingMerge<K: Resource<DynamicType = ()>> {
    /// Namespaces whose first list is not complete yet.
    unlisted: BTreeSet<String>,
    /// Objects in the cache, by namespace.
    objects: HashMap<String, HashMap<ObjectRef<K>, K>>,
    /// Objects of a (re)list in progress, by namespace.
    listing: HashMap<String, HashMap<ObjectRef<K>, K>>,
}

impl<K> ListingMerge<K>
where
    K: Resource<DynamicType = ()> + Clone,
    ObjectRef<K>: Hash + Eq,
{
    pub(super) fn new(namespaces: &[String]) -> Self {
        ListingMerge {
            unlisted: namespaces.iter().cloned().collect(),
            objects: HashMap::new(),
            listing: HashMap::new(),
        }
    }

    /// The events for the cache that follow from `event` of `namespace`'s watch.
    pub(super) fn on_event(&mut self, namespace: &str, event: watcher::Event<K>) -> Vec<watcher::Event<K>> {
        let listed = self.unlisted.is_empty();
        match event {
            watcher::Event::Init => {
                self.listing.insert(namespace.to_owned(), HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) => {
                self.listing
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(ObjectRef::from_obj(&object), object.clone());
                if listed { vec![watcher::Event::Apply(object)] } else { Vec::new() }
            }
            watcher::Event::InitDone => {
                let fresh = self.listing.remove(namespace).unwrap_or_default();
                let stale = self.objects.insert(namespace.to_owned(), fresh).unwrap_or_default();
                if listed {
                    let current = &self.objects[namespace];
                    return stale
                        .into_iter()
                        .filter(|(key, _)| !current.contains_key(key))
                        .map(|(_, object)| watcher::Event::Delete(object))
                        .collect();
                }
                self.unlisted.remove(namespace);
                if !self.unlisted.is_empty() {
                    return Vec::new();
                }
                let everything = self.objects.values().flat_map(|objects| objects.values().cloned());
                std::iter::once(watcher::Event::Init)
                    .chain(everything.map(watcher::Event::InitApply))
                    .chain(std::iter::once(watcher::Event::InitDone))
                    .collect()
            }
            watcher::Event::Apply(object) => {
                self.objects
                    .entry(namespace.to_owned())
                    .or_default()
                    .insert(ObjectRef::from_obj(&object), object.clone());
                if listed { vec![watcher::Event::Apply(object)] } else { Vec::new() }
            }
            watcher::Event::Delete(object) => {
                if let Some(objects) = self.objects.get_mut(namespace) {
                    objects.remove(&ObjectRef::from_obj(&object));
                }
                if listed { vec![watcher::Event::Delete(object)] } else { Vec::new() }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    use super::*;

    fn config_map(namespace: &str, name: &str, value: &str) -> ConfigMap {
        let mut config_map = ConfigMap::default();
        config_map.metadata.namespace = Some(namespace.to_owned());
        config_map.metadata.name = Some(name.to_owned());
        config_map.data = Some([("value".to_owned(), value.to_owned())].into());
        config_map
    }

    /// Feeds events through the merge into a real reflector cache, and returns the cache as
    /// `namespace/name=value`, sorted, with whether it is ready.
    struct Harness {
        merge: ListingMerge<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
        reader: Store<ConfigMap>,
    }

    impl Harness {
        fn new(namespaces: &[&str]) -> Self {
            let namespaces: Vec<String> = namespaces.iter().map(|name| (*name).to_owned()).collect();
            let (reader, writer) = reflector::store();
            Harness { merge: ListingMerge::new(&namespaces), writer, reader }
        }

        fn feed(&mut self, namespace: &str, event: Event<ConfigMap>) -> Vec<String> {
            let out = self.merge.on_event(namespace, event);
            for event in &out {
                self.writer.apply_watcher_event(event);
            }
            out.iter()
                .map(|event| match event {
                    Event::Init => "Init".to_owned(),
                    Event::InitApply(object) => format!("InitApply {}", object.metadata.name.as_deref().unwrap()),
                    Event::InitDone => "InitDone".to_owned(),
                    Event::Apply(object) => format!("Apply {}", object.metadata.name.as_deref().unwrap()),
                    Event::Delete(object) => format!("Delete {}", object.metadata.name.as_deref().unwrap()),
                })
                .collect()
        }

        fn list(&mut self, namespace: &str, objects: &[(&str, &str)]) -> Vec<String> {
            let mut out = self.feed(namespace, Event::Init);
            for (name, value) in objects {
                out.extend(self.feed(namespace, Event::InitApply(config_map(namespace, name, value))));
            }
            out.extend(self.feed(namespace, Event::InitDone));
            out
        }

        fn cache(&self) -> Vec<String> {
            let mut entries: Vec<String> = self
                .reader
                .state()
                .iter()
                .map(|object| {
                    format!(
                        "{}/{}={}",
                        object.metadata.namespace.as_deref().unwrap(),
                        object.metadata.name.as_deref().unwrap(),
                        object.data.as_ref().unwrap()["value"]
                    )
                })
                .collect();
            entries.sort();
            entries
        }

        fn ready(&self) -> bool {
            futures::FutureExt::now_or_never(self.reader.wait_until_ready()).is_some()
        }
    }

    #[test]
    fn the_cache_is_ready_once_every_namespace_is_listed() {
        let mut harness = Harness::new(&["a", "b"]);
        assert!(harness.list("a", &[("one", "1")]).is_empty());
        // Changes in a listed namespace wait for the other namespace's list.
        assert!(harness.feed("a", Event::Apply(config_map("a", "two", "2"))).is_empty());
        assert!(harness.feed("a", Event::Delete(config_map("a", "one", "1"))).is_empty());
        assert!(!harness.ready());
        assert!(harness.cache().is_empty());

        let out = harness.list("b", &[("three", "3")]);
        assert_eq!(out.first().map(String::as_str), Some("Init"));
        assert_eq!(out.last().map(String::as_str), Some("InitDone"));
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(harness.ready());
        assert_eq!(harness.cache(), ["a/two=2", "b/three=3"]);

        assert_eq!(harness.feed("b", Event::Apply(config_map("b", "three", "33"))), ["Apply three"]);
        assert_eq!(harness.feed("a", Event::Delete(config_map("a", "two", "2"))), ["Delete two"]);
        assert_eq!(harness.cache(), ["b/three=33"]);
    }

    #[test]
    fn a_relist_changes_only_its_own_namespace() {
        let mut harness = Harness::new(&["a", "b"]);
        harness.list("a", &[("kept", "1"), ("gone", "1")]);
        harness.list("b", &[("other", "1")]);
        assert_eq!(harness.cache(), ["a/gone=1", "a/kept=1", "b/other=1"]);

        // `a`'s watch reconnects: "gone" was deleted meanwhile, "kept" changed, "new" appeared.
        let out = harness.list("a", &[("kept", "2"), ("new", "1")]);
        assert_eq!(out, ["Apply kept", "Apply new", "Delete gone"]);
        assert_eq!(harness.cache(), ["a/kept=2", "a/new=1", "b/other=1"]);

        // An empty re-list empties that namespace only.
        assert_eq!(harness.list("b", &[]), ["Delete other"]);
        assert_eq!(harness.cache(), ["a/kept=2", "a/new=1"]);
    }

    #[test]
    fn a_list_restarted_before_every_namespace_is_listed_leaves_no_ghosts() {
        let mut harness = Harness::new(&["a", "b"]);
        // `a`'s first list breaks off after one object; the retry no longer sees it.
        harness.feed("a", Event::Init);
        harness.feed("a", Event::InitApply(config_map("a", "ghost", "1")));
        harness.list("a", &[("real", "1")]);
        // A re-list of a listed namespace while the other is still unlisted.
        harness.list("a", &[("real", "2")]);
        harness.list("b", &[]);
        assert_eq!(harness.cache(), ["a/real=2"]);
        assert!(harness.ready());
    }

    #[test]
    fn one_namespace_is_a_plain_watch() {
        let mut harness = Harness::new(&["only"]);
        assert_eq!(harness.list("only", &[("x", "1")]), ["Init", "InitApply x", "InitDone"]);
        assert!(harness.ready());
        assert_eq!(harness.cache(), ["only/x=1"]);
    }
}
