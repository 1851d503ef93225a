// etcd's server at the version Kubernetes pins, from the go.etcd.io/etcd/server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
