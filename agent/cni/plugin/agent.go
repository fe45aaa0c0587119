package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	notRunning = "weave-py agent is not running: try again later"
	noAnswer   = "weave-py agent did not answer in time"
	hungUp     = "weave-py agent closed the connection without answering"
)

// askAgent sends the request (with the netns descriptor fd, which it closes) to the agent at
// path and returns its reply's payload. For STATUS, an agent that is not there means the
// plugin is not available.
func askAgent(path string, req request, fd int, limits timeouts) ([]byte, *cniError) {
	if fd >= 0 {
		defer syscall.Close(fd)
	}
	frame, err := encodeFrame(req)
	if err != nil {
		return nil, err
	}
	payload, err := exchange(path, frame, fd, limits)
	if err != nil && req.Command == "STATUS" && err.code == codeTryAgainLater {
		return nil, &cniError{codeNotReady, "plugin not available: " + err.msg, err.details}
	}
	return payload, err
}

// encodeFrame is the request as one frame: length prefix and JSON.
func encodeFrame(req request) ([]byte, *cniError) {
	var frame bytes.Buffer
	frame.Write([]byte{0, 0, 0, 0})
	encoder := json.NewEncoder(&frame)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(req); err != nil {
		panic(err) // strings and a boolean always encode
	}
	body := bytes.TrimSuffix(frame.Bytes()[4:], []byte("\n"))
	if len(body) > maxFrameBytes {
		return nil, &cniError{codeInvalidConfig, "network configuration too large",
			fmt.Sprintf("request of %d bytes exceeds %d", len(body), maxFrameBytes)}
	}
	binary.BigEndian.PutUint32(frame.Bytes(), uint32(len(body)))
	return frame.Bytes()[:4+len(body)], nil
}

// exchange sends one frame (the descriptor, if any, on its first bytes) over a fresh
// connection and receives the one reply; OS errors become CNI errors.
func exchange(path string, frame []byte, fd int, limits timeouts) ([]byte, *cniError) {
	conn, err := net.DialTimeout("unix", path, limits.connect)
	if err != nil {
		return nil, transportError(path, err, limits)
	}
	defer conn.Close()
	unix := conn.(*net.UnixConn)
	if err := unix.SetDeadline(time.Now().Add(limits.reply)); err != nil {
		return nil, transportError(path, err, limits)
	}
	if err := send(unix, frame, fd); err != nil {
		return nil, transportError(path, err, limits)
	}
	return receiveFrame(unix, path, limits)
}

// send writes the frame; the descriptor rides on the first sendmsg (SCM_RIGHTS).
func send(conn *net.UnixConn, frame []byte, fd int) error {
	sent := 0
	if fd >= 0 {
		n, _, err := conn.WriteMsgUnix(frame, syscall.UnixRights(fd), nil)
		if err != nil {
			return err
		}
		sent = n
	}
	if sent == len(frame) {
		return nil // an empty write to an agent that already answered would be EPIPE
	}
	_, err := conn.Write(frame[sent:])
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		return nil // it may have answered (an error) before reading everything
	}
	return err
}

// receiveFrame reads the reply's length prefix and body.
func receiveFrame(conn io.Reader, path string, limits timeouts) ([]byte, *cniError) {
	var header [4]byte
	n, err := io.ReadFull(conn, header[:])
	switch {
	case errors.Is(err, io.EOF):
		return nil, &cniError{codeTryAgainLater, hungUp, "connection closed before any reply"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, malformed("truncated length prefix", header[:n])
	case err != nil:
		return nil, transportError(path, err, limits)
	}
	size := binary.BigEndian.Uint32(header[:])
	if size > maxFrameBytes {
		return nil, malformed(
			fmt.Sprintf("frame of %d bytes exceeds the limit of %d", size, maxFrameBytes), header[:])
	}
	body := make([]byte, size)
	n, err = io.ReadFull(conn, body)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return nil, malformed(fmt.Sprintf("truncated frame: %d of %d bytes", n, size), body[:n])
	case err != nil:
		return nil, transportError(path, err, limits)
	}
	return body, nil
}

// transportError says what a failed connection means: the agent is not there, silent, or gone
// (try again later), or something else went wrong.
func transportError(path string, err error, limits timeouts) *cniError {
	var timeout net.Error
	if errors.As(err, &timeout) && timeout.Timeout() {
		details := fmt.Sprintf("socket %s: no reply within %g s", path, limits.reply.Seconds())
		return &cniError{codeTryAgainLater, noAnswer, details}
	}
	details := fmt.Sprintf("socket %s: %s", path, cause(err))
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ENOTDIR):
		return &cniError{codeTryAgainLater, notRunning, details}
	case errors.Is(err, syscall.EAGAIN): // its backlog is full
		return &cniError{codeTryAgainLater, noAnswer, details}
	case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		return &cniError{codeTryAgainLater, hungUp, details}
	}
	return &cniError{codeIOFailure, "cannot talk to the weave-py agent", details}
}

// cause is an error without the net package's "dial unix PATH" prefix.
func cause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err.Error()
	}
	return err.Error()
}

// outcome is what to print for a reply: ADD's result, or nil. Agent errors pass through.
func outcome(command string, payload []byte) (any, *cniError) {
	reply, kind, err := decodeObject(payload)
	if err != nil {
		return nil, malformed("not UTF-8 JSON ("+err.Error()+")", payload)
	}
	ok := string(reply["ok"])
	if kind != "object" || (ok != "true" && ok != "false") {
		return nil, malformed("not an object with a boolean 'ok'", payload)
	}
	if ok == "false" {
		return nil, agentError(reply["error"], payload)
	}
	if command != "ADD" {
		return nil, nil
	}
	result := reply["result"]
	if jsonType(result) != "object" {
		return nil, malformed("ADD succeeded without a result object", payload)
	}
	return result, nil
}

// agentError is the agent's own CNI error, passed through unchanged.
func agentError(raw json.RawMessage, payload []byte) *cniError {
	fields, kind, _ := decodeObject(raw)
	if kind != "object" {
		return malformed("'error' is not an object", payload)
	}
	code, err := strconv.ParseInt(string(fields["code"]), 10, 64)
	details, hasDetails := fields["details"]
	if err != nil || code < 1 || jsonType(fields["msg"]) != "string" ||
		(hasDetails && jsonType(details) != "string") {
		return malformed("'error' needs an int 'code' >= 1, a string 'msg' and 'details'", payload)
	}
	return &cniError{int(code), stringOf(fields["msg"]), stringOf(details)}
}

// malformed is a reply the plugin cannot read, with the first bytes of what came.
func malformed(what string, raw []byte) *cniError {
	if len(raw) > 200 {
		raw = raw[:200]
	}
	excerpt := strings.ToValidUTF8(string(raw), "\uFFFD")
	return &cniError{codeIOFailure, "malformed reply from the weave-py agent: " + what,
		"reply began: " + excerpt}
}
