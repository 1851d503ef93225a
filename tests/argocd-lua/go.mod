// Runs an Argo CD health script the way Argo CD does (tests/argocd-lua.sh): in gopher-lua, the
// Lua 5.1 interpreter Argo CD embeds, with the object decoded from JSON as the global `obj`.
module wharf.dev/tests/argocd-lua

go 1.26.0

require github.com/yuin/gopher-lua v1.1.1
