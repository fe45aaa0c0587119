// Command weave-py-net is the weave-py CNI plugin: a thin client of the node's agent.
//
// # Theory of operation
//
// The container runtime executes this program once per CNI operation, with the request in
// CNI_* environment variables and the network configuration on stdin. It does no networking
// itself. It checks what the spec lets it check without state (the variables each command
// needs; that stdin is a JSON object with string cniVersion, name and type; that the version
// is supported and allows the command), hands the request to the weave-py agent on this node
// over a unix socket, and relays the answer. The agent owns the kernel work, the IPAM state
// and the result's format. The program is statically linked and uses Go's standard library
// only, so it runs on any Linux node, with or without Python. Unknown configuration keys are
// not looked at: stdin goes to the agent verbatim.
//
// VERSION is answered here, without the agent, whatever the environment and stdin hold.
//
// The plugin runs in the runtime's namespaces, so it opens CNI_NETNS itself and passes the
// open descriptor with the request (the agent reaches it as /proc/self/fd/N). ADD and CHECK
// need it; DEL passes it when it opens and otherwise says netns_missing, because DEL must
// still release the address after the namespace is gone.
//
// # Wire protocol: one connection, one request, one reply
//
// Socket: SOCK_STREAM unix socket at the config key "socket", else $WEAVE_CNI_SOCKET, else
// /run/weave-py/cni.sock. Frame: a 4-byte big-endian unsigned length, then that many bytes of
// UTF-8 JSON holding one object; at most maxFrameBytes. Request:
//
//	{"command": "ADD" | "CHECK" | "DEL" | "GC" | "STATUS",
//	 "container_id": CNI_CONTAINERID or "", "netns": CNI_NETNS or "",
//	 "ifname": CNI_IFNAME or "", "args": CNI_ARGS or "", "path": CNI_PATH or "",
//	 "config": <stdin, verbatim, as a string>,
//	 "netns_missing": <true exactly when no descriptor rides with the frame>}
//
// The netns descriptor travels as one SCM_RIGHTS descriptor in the same sendmsg as the
// frame's first bytes, so the agent receives it with the recvmsg that reads the length. Reply:
//
//	{"ok": true, "result": <object or null>}
//	{"ok": false, "error": {"code": <int >= 1>, "msg": <str>, "details": <str, optional>}}
//
// ADD prints its result, which must be an object; CHECK, DEL, GC and STATUS print nothing.
//
// # Errors
//
// Printed to stdout as {"cniVersion", "code", "msg", "details"}, exit status 1:
// 1 unsupported cniVersion, or a command the version lacks (CHECK < 0.4.0; GC, STATUS <
// 1.1.0); 4 missing environment variables or an unknown CNI_COMMAND; 5 netns not openable for
// ADD or CHECK, or a malformed reply; 6 stdin not a JSON object; 7 cniVersion, name or type
// missing or not strings; 11 agent not running, busy, gone or silent (50 for STATUS); 100
// anything unexpected. The error's cniVersion is the input's when supported, else the newest
// supported. Agent errors pass through unchanged.
//
// The agent keeps its own copy of the protocol's constants (agent/cni/spec.py); run with the
// single argument --constants, the program prints its own as JSON so a test can compare them.
// Runtimes pass no arguments.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--constants" {
		write(os.Stdout, constants())
		return
	}
	stdin, _ := io.ReadAll(os.Stdin) // no stdin at all reads as empty
	os.Exit(execute(os.Getenv, stdin, os.Stdout, defaultTimeouts))
}

// environment looks a variable up; unset and empty are the same to the plugin.
type environment func(name string) string

// execute runs one CNI command, writes its output or its error to out and returns the exit
// status. A panic (a bug) becomes an internal error like any other.
func execute(env environment, stdin []byte, out io.Writer, limits timeouts) (status int) {
	defer func() {
		if bug := recover(); bug != nil {
			fault := &cniError{codeInternal, "internal error", fmt.Sprint("panic: ", bug)}
			write(out, fault.output(versionOf(stdin)))
			status = 1
		}
	}()
	output, err := run(env, stdin, limits)
	if err != nil {
		write(out, err.output(versionOf(stdin)))
		return 1
	}
	if output != nil {
		write(out, output)
	}
	return 0
}

// run carries out one command: what to print (nil for nothing), or the CNI error.
func run(env environment, stdin []byte, limits timeouts) (any, *cniError) {
	command := env("CNI_COMMAND")
	if err := checkEnvironment(command, env); err != nil {
		return nil, err
	}
	if command == "VERSION" {
		return versionReply{versionOf(stdin), supportedVersions}, nil
	}
	conf, err := parseConfig(stdin)
	if err == nil {
		err = checkVersion(command, conf.version)
	}
	if err != nil {
		return nil, err
	}
	path, err := socketPath(conf, env)
	if err != nil {
		return nil, err
	}
	fd, err := openNetns(command, env("CNI_NETNS"))
	if err != nil {
		return nil, err
	}
	payload, err := askAgent(path, newRequest(command, env, stdin, fd < 0), fd, limits)
	if err != nil {
		return nil, err
	}
	return outcome(command, payload)
}

// versionReply is VERSION's output.
type versionReply struct {
	CNIVersion        string   `json:"cniVersion"`
	SupportedVersions []string `json:"supportedVersions"`
}

// cniError is a CNI error result: what the plugin prints before exiting with status 1.
type cniError struct {
	code    int
	msg     string
	details string
}

// output is the error as printed, in the input's cniVersion.
func (e *cniError) output(version string) errorReply {
	return errorReply{version, e.code, e.msg, e.details}
}

// errorReply is an error's output.
type errorReply struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

// write prints one JSON document and a newline; if stdout is gone there is nowhere left to
// report to.
func write(out io.Writer, value any) {
	encoder := json.NewEncoder(out)
	encoder.SetEscapeHTML(false)
	_ = encoder.Encode(value)
}
