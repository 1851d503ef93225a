// Runs an Argo CD health script on one object the way Argo CD's controller runs a health check
// from argocd-cm: gopher-lua with only the package, base and table libraries (no `string`,
// `math` or `io`: a script that needs them fails here as it would there), the object decoded
// from JSON as the global `obj`, one second to finish, and the table the chunk returns read for
// `status` and `message` (a status Argo CD does not know becomes Unknown, as there). Prints the
// status and the message on two lines.
//
// Usage: argocd-lua SCRIPT < OBJECT.json
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The health statuses Argo CD accepts from a script.
var knownStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

// toLua converts a decoded JSON value as Argo CD's JSON decoder does: objects and arrays
// become tables (arrays indexed from 1), numbers float64, null nil.
func toLua(state *lua.LState, value any) lua.LValue {
	switch typed := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(typed)
	case float64:
		return lua.LNumber(typed)
	case string:
		return lua.LString(typed)
	case []any:
		table := state.NewTable()
		for _, item := range typed {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]any:
		table := state.NewTable()
		for key, item := range typed {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", value))
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: argocd-lua SCRIPT < OBJECT.json")
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		return fmt.Errorf("failed to read the script: %w", err)
	}
	var object map[string]any
	if err := json.NewDecoder(os.Stdin).Decode(&object); err != nil {
		return fmt.Errorf("failed to decode the object: %w", err)
	}
	state := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer state.Close()
	for _, library := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := state.CallByParam(lua.P{Fn: state.NewFunction(library.open), NRet: 0, Protect: true}, lua.LString(library.name)); err != nil {
			return fmt.Errorf("failed to open the %s library: %w", library.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(string(script)); err != nil {
		return fmt.Errorf("the script failed: %w", err)
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return fmt.Errorf("expected a table from the script, got %s", state.Get(-1).Type())
	}
	status := lua.LVAsString(returned.RawGetString("status"))
	message := lua.LVAsString(returned.RawGetString("message"))
	if !knownStatuses[status] {
		status, message = "Unknown", "Lua returned an invalid health status"
	}
	fmt.Printf("%s\n%s", status, message)
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua:", err)
		os.Exit(1)
	}
}
