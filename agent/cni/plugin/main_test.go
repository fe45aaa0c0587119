package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The plugin in-process, for what a subprocess cannot arrange cheaply: a bug's panic and an
// agent that never answers within a short reply timeout. Everything else is tested on the
// binary (tests/agent/test_cni_plugin.py).

func config(version string) []byte {
	return []byte(`{"cniVersion": "` + version + `", "name": "weave", "type": "weave-py-net"}`)
}

func runPlugin(t *testing.T, env environment, stdin []byte, limits timeouts) (int, errorReply) {
	t.Helper()
	var out bytes.Buffer
	status := execute(env, stdin, &out, limits)
	var reply errorReply
	if err := json.Unmarshal(out.Bytes(), &reply); err != nil {
		t.Fatalf("output %q is not an error: %v", out.String(), err)
	}
	return status, reply
}

func TestAPanicBecomesAnInternalError(t *testing.T) {
	env := func(name string) string {
		if name == "CNI_NETNS" {
			panic("kaboom")
		}
		return map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee"}[name]
	}
	status, reply := runPlugin(t, env, config("0.4.0"), defaultTimeouts)
	want := errorReply{"0.4.0", 100, "internal error", "panic: kaboom"}
	if status != 1 || reply != want {
		t.Fatalf("got %d %+v, want 1 %+v", status, reply, want)
	}
}

func TestAnAgentThatDoesNotAnswerTimesOut(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cni.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	go func() {
		conn, err := listener.Accept()
		if err == nil {
			defer conn.Close()
			time.Sleep(5 * time.Second) // reads nothing, answers nothing
		}
	}()
	netns := filepath.Join(dir, "netns")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee",
		"CNI_NETNS": netns, "CNI_IFNAME": "eth0", "WEAVE_CNI_SOCKET": path}
	started := time.Now()
	status, reply := runPlugin(t, func(name string) string { return vars[name] }, config("1.1.0"),
		timeouts{connect: 2 * time.Second, reply: 200 * time.Millisecond})
	if took := time.Since(started); took > 2*time.Second {
		t.Fatalf("took %v with a reply timeout of 200ms", took)
	}
	if status != 1 || reply.Code != 11 || reply.Msg != "weave-py agent did not answer in time" {
		t.Fatalf("got %d %+v", status, reply)
	}
	if !strings.Contains(reply.Details, path) {
		t.Fatalf("details %q do not name the socket", reply.Details)
	}
}

func TestVersionsCompareNumberByNumber(t *testing.T) {
	cases := []struct {
		version, than string
		older         bool
	}{
		{"0.3.1", "0.4.0", true}, {"0.4.0", "0.4.0", false}, {"1.0.0", "0.4.0", false},
		{"0.10.0", "0.4.0", false}, {"1.0.0", "1.1.0", true},
	}
	for _, c := range cases {
		if olderThan(c.version, c.than) != c.older {
			t.Errorf("olderThan(%q, %q) = %v", c.version, c.than, !c.older)
		}
	}
}
