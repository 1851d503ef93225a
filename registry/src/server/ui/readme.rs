//! A package's readme as safe HTML: Markdown rendered by `pulldown-cmark`, then cleaned by
//! `ammonia`, which keeps only harmless tags and attributes (no script, no event handlers,
//! no `style`). Images are never loaded from elsewhere: a Markdown image becomes a link to
//! it, and an `<img>` written in the readme's own HTML loses its source. Links keep only
//! absolute http(s) and mailto addresses (a relative link points into a repository the
//! registry does not have) and open without a referrer.

use std::collections::HashSet;

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

/// Readmes longer than this are cut (a readme is shown, not archived).
const MAX_README_BYTES: usize = 512 * 1024;

pub fn render(markdown: &str) -> String {
    let mut end = markdown.len().min(MAX_README_BYTES);
    while !markdown.is_char_boundary(end) {
        end -= 1;
    }
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    // An image becomes a link to it whose text says it is one.
    let events = Parser::new_ext(&markdown[..end], options).flat_map(|event| match event {
        Event::Start(Tag::Image { dest_url, title, id, .. }) => vec![
            Event::Start(Tag::Link { link_type: LinkType::Inline, dest_url, title, id }),
            Event::Text(CowStr::Borrowed("image: ")),
        ],
        Event::End(TagEnd::Image) => vec![Event::End(TagEnd::Link)],
        other => vec![other],
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    clean(&html)
}

fn clean(html: &str) -> String {
    let schemes: HashSet<&str> = ["http", "https", "mailto"].into_iter().collect();
    ammonia::Builder::default()
        .url_schemes(schemes)
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer nofollow"))
        .attribute_filter(|element, attribute, value| match (element, attribute) {
            ("img", "src" | "srcset") => None,
            _ => Some(value.into()),
        })
        .clean(html)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_becomes_html() {
        let html = render(
            "# Title\n\nSome *text* and a [link](https://example.test/docs).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(html.contains("<em>text</em>"), "{html}");
        assert!(
            html.contains(r#"<a href="https://example.test/docs" rel="noopener noreferrer nofollow">link</a>"#),
            "{html}"
        );
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn scripts_handlers_and_dangerous_links_are_removed() {
        let html = render(
            "<script>alert(1)</script>\n\n<p onclick=\"alert(2)\" style=\"color:red\">hi</p>\n\n\
             [click](javascript:alert(3)) [data](data:text/html,<b>x</b>) <a href=\"vbscript:x\">v</a>\n\n\
             <iframe src=\"https://example.test\"></iframe><form action=\"/x\"><input name=a></form>",
        );
        for forbidden in [
            "<script",
            "alert(1)",
            "onclick",
            "style=",
            "javascript:",
            "data:text",
            "vbscript",
            "<iframe",
            "<form",
            "<input",
        ] {
            assert!(!html.contains(forbidden), "{forbidden} survived: {html}");
        }
        assert!(html.contains("hi"), "{html}");
    }

    #[test]
    fn images_are_never_loaded() {
        let html = render(
            "![logo](https://tracker.example.test/pixel.png)\n\n<img src=\"https://tracker.example.test/a.png\" alt=\"badge\">",
        );
        assert!(!html.contains("<img src"), "{html}");
        assert!(html.contains(r#"<a href="https://tracker.example.test/pixel.png""#), "{html}");
        assert!(html.contains("logo"), "{html}");
        assert!(html.contains(r#"alt="badge""#), "{html}");
    }

    #[test]
    fn relative_links_are_dropped_and_long_readmes_cut() {
        let html = render("[guide](docs/guide.md)");
        assert!(!html.contains("href"), "{html}");
        let long = "é".repeat(super::MAX_README_BYTES);
        assert!(render(&long).len() < long.len() + 100);
    }
}
