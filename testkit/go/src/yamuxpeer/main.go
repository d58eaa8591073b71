// Command yamuxpeer is the hashicorp/yamux side of the interop tests and the Go
// reference of the benchmark for visiona.yamux (the Python implementation).
//
// It is built in GOPATH mode against Debian's golang-github-hashicorp-yamux-dev (a
// 2019 snapshot) and golang-github-gorilla-websocket-dev. It prints JSON lines on
// stdout ("events"); the Python side reads them.
//
// Modes:
//
//	-mode service  run a yamux session and serve the test commands on accepted streams
//	-mode suite    run a yamux session, open streams and run the scenario suite
//	-mode bench    measure raw TCP and yamux-over-TCP throughput in this process
//
// Stream commands (first byte of a stream, integers are big-endian uint64):
//
//	'E' n       echo exactly n bytes back, then close
//	'S'         read until EOF, reply sha256(data) + count, then close
//	'R' m n h   reply sha256(d) + d (m random bytes), half-close (FIN), then read n
//	            bytes whose sha256 must be h; report the outcome as an event
//	'W'         reply "w", read until an error; report it (expects a reset)
//	'A'         send GoAway (normal), reply "ok"
//	'P'         ping the peer, reply "ok"
//	'X'         (Python service only) reset the stream
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math/rand"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

var (
	outMu sync.Mutex
	out   = json.NewEncoder(os.Stdout)
)

func emit(fields map[string]interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	_ = out.Encode(fields)
}

// wsConn turns a WebSocket into a byte stream (binary messages, boundaries ignored).
type wsConn struct {
	c   *websocket.Conn
	r   io.Reader
	wmu sync.Mutex
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			mt, r, err := w.c.NextReader()
			if err != nil {
				return 0, err
			}
			if mt != websocket.BinaryMessage {
				continue
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if err == io.EOF {
			w.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	if err := w.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *wsConn) Close() error { return w.c.Close() }

func u64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func putU64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// readN reads exactly n bytes after a local Close: Debian's yamux returns EOF from
// Read as soon as its buffer is empty once Close was called (fixed upstream in
// v0.1.2), so EOF before n bytes means "not yet", not "never".
func readNAfterClose(st *yamux.Stream, n int) ([]byte, error) {
	buf := make([]byte, 0, n)
	tmp := make([]byte, 64*1024)
	deadline := time.Now().Add(60 * time.Second)
	for len(buf) < n {
		k, err := st.Read(tmp)
		buf = append(buf, tmp[:k]...)
		if err == io.EOF {
			if time.Now().After(deadline) {
				return buf, fmt.Errorf("got %d of %d bytes", len(buf), n)
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

func serveStream(sess *yamux.Session, st *yamux.Stream) {
	defer st.Close()
	var cmd [1]byte
	if _, err := io.ReadFull(st, cmd[:]); err != nil {
		return
	}
	switch cmd[0] {
	case 'E':
		var hdr [8]byte
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			return
		}
		n := int64(u64(hdr[:]))
		if _, err := io.CopyN(st, st, n); err != nil {
			emit(map[string]interface{}{"event": "error", "cmd": "E", "error": err.Error()})
		}
	case 'S':
		h := sha256.New()
		count, err := io.Copy(h, st)
		if err != nil {
			emit(map[string]interface{}{"event": "error", "cmd": "S", "error": err.Error()})
			return
		}
		st.Write(append(h.Sum(nil), putU64(uint64(count))...))
	case 'R':
		var hdr [48]byte
		if _, err := io.ReadFull(st, hdr[:]); err != nil {
			return
		}
		m, n, want := int(u64(hdr[0:8])), int(u64(hdr[8:16])), hdr[16:48]
		data := randomBytes(m)
		sum := sha256.Sum256(data)
		st.Write(append(sum[:], data...))
		st.Close() // our FIN: the Go->Python direction is done
		got, err := readNAfterClose(st, n)
		gotSum := sha256.Sum256(got)
		ok := err == nil && bytes.Equal(gotSum[:], want)
		detail := ""
		if err != nil {
			detail = err.Error()
		}
		emit(map[string]interface{}{"event": "halfclose", "ok": ok, "bytes": len(got), "detail": detail})
	case 'W':
		st.Write([]byte("w")) // tell the peer we are reading (a reset before would fail the command read)
		_, err := io.Copy(ioutil.Discard, st)
		msg := "eof"
		if err != nil {
			msg = err.Error()
		}
		emit(map[string]interface{}{"event": "reset", "reset": err == yamux.ErrConnectionReset, "error": msg})
	case 'A':
		err := sess.GoAway()
		st.Write([]byte("ok"))
		emit(map[string]interface{}{"event": "goaway", "ok": err == nil})
	case 'P':
		rtt, err := sess.Ping()
		if err == nil {
			st.Write([]byte("ok"))
		} else {
			st.Write([]byte("er"))
		}
		emit(map[string]interface{}{"event": "ping", "ok": err == nil, "rtt_us": rtt.Microseconds()})
	}
}

func runService(sess *yamux.Session, noAccept bool) {
	if noAccept {
		<-sess.CloseChan()
		return
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go serveStream(sess, st)
	}
}

// --- the suite (Go opens streams against the Python service) ---------------------

func result(name string, err error) {
	detail := ""
	if err != nil {
		detail = err.Error()
	}
	emit(map[string]interface{}{"event": "result", "name": name, "ok": err == nil, "detail": detail})
}

func echo(sess *yamux.Session, size int) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	data := randomBytes(size)
	if _, err := st.Write(append([]byte{'E'}, putU64(uint64(size))...)); err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		var err error
		for off := 0; off < size && err == nil; off += 64 * 1024 {
			end := off + 64*1024
			if end > size {
				end = size
			}
			_, err = st.Write(data[off:end])
		}
		werr <- err
	}()
	h := sha256.New()
	if _, err := io.CopyN(h, st, int64(size)); err != nil {
		return fmt.Errorf("reading the echo: %v", err)
	}
	if err := <-werr; err != nil {
		return err
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("echo differs (sha256)")
	}
	// Read the whole reply (the peer's FIN) before closing: see readNAfterClose.
	var one [1]byte
	if n, err := st.Read(one[:]); n != 0 || err != io.EOF {
		return fmt.Errorf("expected EOF after the echo, got %d bytes, %v", n, err)
	}
	return nil
}

func halfClosePy(sess *yamux.Session, m, n int) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	data := randomBytes(n)
	sum := sha256.Sum256(data)
	req := append([]byte{'R'}, putU64(uint64(m))...)
	req = append(req, putU64(uint64(n))...)
	req = append(req, sum[:]...)
	if _, err := st.Write(req); err != nil {
		return err
	}
	reply, err := ioutil.ReadAll(st) // until the Python side's FIN
	if err != nil {
		return fmt.Errorf("reading the reply: %v", err)
	}
	if len(reply) != 32+m {
		return fmt.Errorf("reply of %d bytes, want %d", len(reply), 32+m)
	}
	got := sha256.Sum256(reply[32:])
	if !bytes.Equal(got[:], reply[:32]) {
		return errors.New("reply differs (sha256)")
	}
	// The Python side closed its write side; it still reads ours.
	if _, err := st.Write(data); err != nil {
		return fmt.Errorf("writing after the peer's FIN: %v", err)
	}
	return nil
}

func expectReset(sess *yamux.Session) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write([]byte{'X'}); err != nil {
		return err
	}
	_, err = io.Copy(ioutil.Discard, st)
	if err != yamux.ErrConnectionReset {
		return fmt.Errorf("expected a reset, got %v", err)
	}
	return nil
}

func pingFromPython(sess *yamux.Session) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write([]byte{'P'}); err != nil {
		return err
	}
	reply, err := ioutil.ReadAll(st)
	if err != nil || string(reply) != "ok" {
		return fmt.Errorf("ping reply %q, %v", reply, err)
	}
	return nil
}

func goAwayFromPython(sess *yamux.Session) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write([]byte{'A'}); err != nil {
		return err
	}
	reply, err := ioutil.ReadAll(st)
	if err != nil || string(reply) != "ok" {
		return fmt.Errorf("goaway reply %q, %v", reply, err)
	}
	if _, err := sess.OpenStream(); err != yamux.ErrRemoteGoAway {
		return fmt.Errorf("open after GoAway: %v", err)
	}
	return nil
}

func runSuite(sess *yamux.Session, bulk int) {
	_, err := sess.Ping()
	result("ping", err)
	result("echo_bulk", echo(sess, bulk))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- echo(sess, 256*1024+i*4099)
		}(i)
	}
	wg.Wait()
	close(errs)
	var first error
	for err := range errs {
		if err != nil && first == nil {
			first = err
		}
	}
	result("concurrent_32", first)
	result("halfclose_by_python", halfClosePy(sess, 1<<20, 1<<20))
	result("reset_by_python", expectReset(sess))
	result("ping_from_python", pingFromPython(sess))
	result("goaway_from_python", goAwayFromPython(sess))
	emit(map[string]interface{}{"event": "suite_done", "streams": sess.NumStreams()})
}

// --- connection set-up -------------------------------------------------------------

func yamuxConfig(window int, backlog int) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	if window > 0 {
		cfg.MaxStreamWindowSize = uint32(window)
	}
	if backlog > 0 {
		cfg.AcceptBacklog = backlog
	}
	return cfg
}

func connect(network, listen, dial string) io.ReadWriteCloser {
	switch {
	case network == "tcp" && listen != "":
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			log.Fatal(err)
		}
		emit(map[string]interface{}{"event": "listening", "addr": ln.Addr().String()})
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		ln.Close()
		return conn
	case network == "tcp":
		conn, err := net.Dial("tcp", dial)
		if err != nil {
			log.Fatal(err)
		}
		return conn
	case network == "ws" && listen != "":
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			log.Fatal(err)
		}
		emit(map[string]interface{}{"event": "listening", "addr": ln.Addr().String()})
		conns := make(chan *websocket.Conn, 1)
		upgrader := websocket.Upgrader{ReadBufferSize: 64 * 1024, WriteBufferSize: 64 * 1024}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := upgrader.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			conns <- c
		})}
		go srv.Serve(ln)
		c := <-conns
		ln.Close()
		return &wsConn{c: c}
	case network == "ws":
		d := websocket.Dialer{ReadBufferSize: 64 * 1024, WriteBufferSize: 64 * 1024}
		c, _, err := d.Dial(dial, nil)
		if err != nil {
			log.Fatal(err)
		}
		return &wsConn{c: c}
	}
	log.Fatalf("bad -net %q", network)
	return nil
}

func main() {
	mode := flag.String("mode", "service", "service | suite | bench")
	network := flag.String("net", "tcp", "tcp | ws")
	listen := flag.String("listen", "", "listen on this address (host:port)")
	dial := flag.String("dial", "", "dial this address (host:port, or ws://... for -net ws)")
	window := flag.Int("window", 0, "MaxStreamWindowSize (0: default 256 KiB)")
	backlog := flag.Int("backlog", 0, "AcceptBacklog (0: default)")
	noAccept := flag.Bool("noaccept", false, "service: never accept streams")
	bulk := flag.Int("bulk", 64<<20, "suite: bytes each way on the bulk stream")
	benchBytes := flag.Int("bytes", 512<<20, "bench: bytes per scenario")
	flag.Parse()
	rand.Seed(time.Now().UnixNano())

	if *mode == "bench" {
		runBench(*benchBytes, *window)
		return
	}
	conn := connect(*network, *listen, *dial)
	cfg := yamuxConfig(*window, *backlog)
	var sess *yamux.Session
	var err error
	if *mode == "service" {
		sess, err = yamux.Server(conn, cfg)
	} else {
		sess, err = yamux.Client(conn, cfg)
	}
	if err != nil {
		log.Fatal(err)
	}
	emit(map[string]interface{}{"event": "session"})
	if *mode == "service" {
		runService(sess, *noAccept)
	} else {
		runSuite(sess, *bulk)
		sess.Close()
	}
	emit(map[string]interface{}{"event": "closed"})
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
