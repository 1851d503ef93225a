// kubectl at the same version, from the k8s.io/kubectl module: the tests check what
// `kubectl get` and `kubectl explain` show for Wharf's kinds.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() {
	os.Exit(cli.Run(cmd.NewDefaultKubectlCommand()))
}
