#!/bin/sh
# Installs the Centrifugo peer of the fan-out benchmark: `go install` into $(go env GOPATH)/bin.
# Compiling takes a few minutes of CPU; run it once, not during a benchmark.
set -eu
VERSION="${CENTRIFUGO_VERSION:-v6.9.1}"
command -v go >/dev/null || { echo "Go is not installed: https://go.dev/doc/install" >&2; exit 1; }
GOFLAGS=-mod=mod nice -n 19 go install "github.com/centrifugal/centrifugo/v6@${VERSION}"
"$(go env GOPATH)/bin/centrifugo" version
