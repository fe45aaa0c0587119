// The CNI plugin (agent/cni/plugin): Go's standard library only, so it builds offline:
// CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o .venv/bin/weave-py-net ./agent/cni/plugin
module weave-py

go 1.19
