package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"
)

// netConf is what the plugin reads of the network configuration: the version and the agent's
// socket. The rest is the agent's to read.
type netConf struct {
	version string
	fields  map[string]json.RawMessage
}

// request is the frame sent to the agent.
type request struct {
	Command      string `json:"command"`
	ContainerID  string `json:"container_id"`
	Netns        string `json:"netns"`
	Ifname       string `json:"ifname"`
	Args         string `json:"args"`
	Path         string `json:"path"`
	Config       string `json:"config"`
	NetnsMissing bool   `json:"netns_missing"`
}

// newRequest forwards the runtime's variables and stdin verbatim.
func newRequest(command string, env environment, stdin []byte, netnsMissing bool) request {
	return request{
		Command:      command,
		ContainerID:  env("CNI_CONTAINERID"),
		Netns:        env("CNI_NETNS"),
		Ifname:       env("CNI_IFNAME"),
		Args:         env("CNI_ARGS"),
		Path:         env("CNI_PATH"),
		Config:       string(stdin),
		NetnsMissing: netnsMissing,
	}
}

// checkEnvironment refuses an unknown command or one whose variables are missing.
func checkEnvironment(command string, env environment) *cniError {
	if command == "" {
		return &cniError{codeInvalidEnv, "required environment variables missing: CNI_COMMAND", ""}
	}
	required, known := requiredEnv[command]
	if !known {
		return &cniError{
			codeInvalidEnv,
			"unknown CNI_COMMAND " + quoted(command),
			"expected one of " + strings.Join(commands, ", "),
		}
	}
	var missing []string
	for _, name := range required {
		if env(name) == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return &cniError{
			codeInvalidEnv,
			"required environment variables missing: " + strings.Join(missing, ", "),
			command + " needs " + strings.Join(required, ", "),
		}
	}
	return nil
}

// parseConfig checks that stdin is a JSON object with string cniVersion, name and type.
func parseConfig(stdin []byte) (netConf, *cniError) {
	fields, kind, err := decodeObject(stdin)
	if err != nil {
		return netConf{}, &cniError{codeDecode, "network configuration on stdin is not valid JSON",
			err.Error()}
	}
	if kind != "object" {
		return netConf{}, &cniError{codeDecode,
			"network configuration on stdin is not a JSON object", "got " + kind}
	}
	for _, key := range []string{"cniVersion", "name", "type"} {
		raw, present := fields[key]
		if !present {
			return netConf{}, &cniError{codeInvalidConfig,
				"network configuration field " + quoted(key) + " is missing", ""}
		}
		if kind := jsonType(raw); kind != "string" {
			return netConf{}, &cniError{codeInvalidConfig,
				"network configuration field " + quoted(key) + " must be a string", "got " + kind}
		}
	}
	return netConf{stringOf(fields["cniVersion"]), fields}, nil
}

// versionOf is the input's cniVersion if stdin is a config naming a supported one, else the
// newest supported.
func versionOf(stdin []byte) string {
	fields, _, err := decodeObject(stdin)
	if err != nil || jsonType(fields["cniVersion"]) != "string" {
		return latestVersion
	}
	version := stringOf(fields["cniVersion"])
	for _, supported := range supportedVersions {
		if version == supported {
			return version
		}
	}
	return latestVersion
}

// checkVersion refuses an unsupported version, or one older than the command.
func checkVersion(command, version string) *cniError {
	supported := false
	for _, candidate := range supportedVersions {
		supported = supported || candidate == version
	}
	if !supported {
		return &cniError{codeIncompatibleVersion, "unsupported cniVersion " + quoted(version) +
			": supported versions are " + strings.Join(supportedVersions, ", "), ""}
	}
	needed, limited := minVersion[command]
	if limited && olderThan(version, needed) {
		return &cniError{
			codeIncompatibleVersion,
			command + " is not supported before cniVersion " + needed,
			"the network configuration has cniVersion " + version,
		}
	}
	return nil
}

// olderThan compares two dotted versions number by number.
func olderThan(version, than string) bool {
	a, b := strings.Split(version, "."), strings.Split(than, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		x, _ := strconv.Atoi(a[i])
		y, _ := strconv.Atoi(b[i])
		if x != y {
			return x < y
		}
	}
	return len(a) < len(b)
}

// socketPath is the agent's socket: the config's "socket", else $WEAVE_CNI_SOCKET, else the
// default.
func socketPath(conf netConf, env environment) (string, *cniError) {
	raw, present := conf.fields["socket"]
	kind := jsonType(raw)
	if !present || kind == "null" {
		if path := env("WEAVE_CNI_SOCKET"); path != "" {
			return path, nil
		}
		return defaultSocket, nil
	}
	if path := stringOf(raw); kind == "string" && path != "" {
		return path, nil
	}
	return "", &cniError{codeInvalidConfig,
		"network configuration field 'socket' must be a non-empty string", "got " + kind}
}

// openNetns opens the pod's namespace for ADD, CHECK and DEL; -1 where the command can do
// without (DEL still releases what the agent holds after the namespace is gone).
func openNetns(command, netns string) (int, *cniError) {
	if (command != "ADD" && command != "CHECK" && command != "DEL") || netns == "" {
		return -1, nil
	}
	fd, err := syscall.Open(netns, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err == nil {
		return fd, nil
	}
	if command == "DEL" {
		return -1, nil
	}
	return -1, &cniError{codeIOFailure, "cannot open network namespace " + netns, err.Error()}
}

// decodeObject decodes one JSON document that should be an object: its members and its type,
// or why it is not JSON (the spec wants UTF-8, which Go's decoder alone would not insist on).
func decodeObject(data []byte) (map[string]json.RawMessage, string, error) {
	if !utf8.Valid(data) {
		return nil, "", errors.New("not UTF-8")
	}
	if !json.Valid(data) {
		return nil, "", json.Unmarshal(data, new(any))
	}
	kind := jsonType(data)
	if kind != "object" {
		return nil, kind, nil
	}
	var fields map[string]json.RawMessage
	return fields, kind, json.Unmarshal(data, &fields)
}

// jsonType names the type of one JSON value ("" when there is none).
func jsonType(raw []byte) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return ""
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// stringOf decodes a JSON string ("" for anything else).
func stringOf(raw []byte) string {
	var text string
	_ = json.Unmarshal(raw, &text)
	return text
}

// quoted puts a name in quotes the way the plugin's messages always have: 'name'.
func quoted(text string) string {
	return "'" + text + "'"
}
