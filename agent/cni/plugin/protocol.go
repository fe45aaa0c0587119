package main

import "time"

// The protocol's constants. The agent holds the same values (agent/cni/spec.py); a test
// compares them with what --constants prints.

// supportedVersions are the CNI spec versions the plugin speaks, oldest first.
var supportedVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// latestVersion is the newest supported version: an error's cniVersion when the input's is
// unknown.
var latestVersion = supportedVersions[len(supportedVersions)-1]

// minVersion is the first version that has a command (the others are in all of them).
var minVersion = map[string]string{"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

// commands are the CNI commands, in the order an unknown one's error lists them.
var commands = []string{"ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION"}

// requiredEnv are the variables each command needs set and non-empty.
var requiredEnv = map[string][]string{
	"ADD":     {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	"CHECK":   {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"},
	"DEL":     {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"},
	"GC":      {"CNI_COMMAND"},
	"STATUS":  {"CNI_COMMAND"},
	"VERSION": {"CNI_COMMAND"},
}

const (
	// defaultSocket is the agent's CNI socket when neither the config nor the environment
	// names one.
	defaultSocket = "/run/weave-py/cni.sock"
	// maxFrameBytes bounds the JSON of one frame, either direction (the agent's limit too).
	maxFrameBytes = 1 << 20
)

// CNI error codes (spec 1.1.0) and ours (100+) that the plugin reports. The numbers are the
// protocol; the agent's Code is built on the same numbers.
const (
	codeIncompatibleVersion = 1
	codeInvalidEnv          = 4
	codeIOFailure           = 5
	codeDecode              = 6
	codeInvalidConfig       = 7
	codeTryAgainLater       = 11
	codeNotReady            = 50 // STATUS: not ready for ADD
	codeInternal            = 100
)

// timeouts bound the talk with the agent.
type timeouts struct {
	connect time.Duration // the agent accepts at once or is not there
	reply   time.Duration // from the connection to the whole reply
}

// defaultTimeouts: an ADD may wait for the node to get address space.
var defaultTimeouts = timeouts{connect: 2 * time.Second, reply: 60 * time.Second}

// constantsReply is what --constants prints: the values the agent must share.
type constantsReply struct {
	SupportedVersions []string            `json:"supportedVersions"`
	MinVersion        map[string]string   `json:"minVersion"`
	RequiredEnv       map[string][]string `json:"requiredEnv"`
	DefaultSocket     string              `json:"defaultSocket"`
	MaxFrameBytes     int                 `json:"maxFrameBytes"`
	Codes             map[string]int      `json:"codes"`
}

// constants names every protocol constant the way the agent's spec module does.
func constants() constantsReply {
	return constantsReply{
		SupportedVersions: supportedVersions,
		MinVersion:        minVersion,
		RequiredEnv:       requiredEnv,
		DefaultSocket:     defaultSocket,
		MaxFrameBytes:     maxFrameBytes,
		Codes: map[string]int{
			"INCOMPATIBLE_VERSION": codeIncompatibleVersion,
			"INVALID_ENV":          codeInvalidEnv,
			"IO_FAILURE":           codeIOFailure,
			"DECODE":               codeDecode,
			"INVALID_CONFIG":       codeInvalidConfig,
			"TRY_AGAIN_LATER":      codeTryAgainLater,
			"NOT_READY":            codeNotReady,
			"INTERNAL":             codeInternal,
		},
	}
}
