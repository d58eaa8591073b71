// tunnelpeer: the Go side of the tunnel interop tests and of the tunnel bench.
//
// Built in GOPATH mode against Debian's hashicorp/yamux and gorilla/websocket.
//
//	-mode agent: pair (POST /api/v1/agent/pair) unless a session file exists, open the
//	    tunnel WebSocket with the bearer session token, run the yamux server and forward
//	    every stream to -forward with half-close; reconnect after a close; exit 3 when
//	    the upgrade (or pairing) is refused with 401/403.
//	-mode cloud: a cloud stand-in on -listen: /api/v1/agent/pair, /api/v1/agent/status,
//	    /api/v1/agent/tunnel (yamux client) and /proxy/<path> which sends each request
//	    over a new stream to the connected agent and streams the answer back.
//
//	-mode hub: the minimal tunnel server of the scale bench's reference: any bearer token,
//	    every tunnel kept (yamux client, hashicorp's keepalive), GET /count answers how
//	    many are up.
//	-mode fleet: -tokens agents in one process for the scale benches (fleet.go): each
//	    opens its tunnel to -server as -mode agent does, answers every stream with a
//	    tiny HTTP answer and reconnects as `visiona agent` does; progress lines on stdout.
//	-mode origin, -mode load: the bench's local HTTP service and load client (bench.go).
//
// Events are JSON lines on stdout.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
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
	c       *websocket.Conn
	r       io.Reader
	wmu     sync.Mutex
	readErr error
}

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			mt, r, err := w.c.NextReader()
			if err != nil {
				w.readErr = err
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

// yamuxLog: hashicorp/yamux's own log lines ("[WARN] yamux: frame for missing stream"
// ...) go to stderr instead of nowhere (-yamux-log), for tests that count them.
var yamuxLog = false

// keepAlive: the yamux keepalive interval (-keepalive; 0 keeps hashicorp's 30 s), so the
// scale bench's reference hub pings as often as visiona serve does.
var keepAlive time.Duration

func yamuxConfig(window int) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	if yamuxLog {
		cfg.LogOutput = os.Stderr
	}
	if window > 0 {
		cfg.MaxStreamWindowSize = uint32(window)
	}
	if keepAlive > 0 {
		cfg.KeepAliveInterval = keepAlive
	}
	return cfg
}

// ---------------------------------------------------------------- agent

type session struct {
	Server       string `json:"server"`
	DeviceID     string `json:"device_id"`
	SessionToken string `json:"session_token"`
	ExpiresAt    string `json:"expires_at"`
}

func pair(server, token, serial string) (*session, int, error) {
	body, _ := json.Marshal(map[string]string{
		"pairing_token": token, "serial_number": serial, "device_type": "kl520", "name": "go agent",
	})
	resp, err := http.Post(server+"/api/v1/agent/pair", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return nil, resp.StatusCode, fmt.Errorf("pair: HTTP %d", resp.StatusCode)
	}
	var s session
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, 0, err
	}
	s.Server = server
	return &s, resp.StatusCode, nil
}

func forward(st net.Conn, addr string) {
	defer st.Close()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		if ys, ok := st.(*yamux.Stream); ok {
			ys.Close()
		}
		return
	}
	tcp := c.(*net.TCPConn)
	defer tcp.Close()
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 256*1024)
		io.CopyBuffer(tcp, st, buf)
		tcp.CloseWrite()
		close(done)
	}()
	buf := make([]byte, 256*1024)
	io.CopyBuffer(st, tcp, buf)
	st.Close() // FIN: half-close towards the cloud
	<-done
}

func runAgent(server, token, fwd, sessionFile, serial string, window int) {
	server = strings.TrimRight(server, "/")
	var s *session
	if data, err := ioutil.ReadFile(sessionFile); err == nil {
		s = &session{}
		if json.Unmarshal(data, s) != nil || s.Server != server {
			s = nil
		}
	}
	if s == nil {
		var status int
		var err error
		s, status, err = pair(server, token, serial)
		if status == 401 || status == 403 {
			emit(map[string]interface{}{"event": "refused", "status": status, "what": "pair"})
			os.Exit(3)
		}
		if err != nil {
			log.Fatal(err)
		}
		data, _ := json.Marshal(s)
		if err := ioutil.WriteFile(sessionFile, data, 0o600); err != nil {
			log.Fatal(err)
		}
		emit(map[string]interface{}{"event": "paired", "device_id": s.DeviceID})
	}
	wsURL := "ws" + strings.TrimPrefix(server, "http") + "/api/v1/agent/tunnel"
	for {
		d := websocket.Dialer{ReadBufferSize: 256 * 1024, WriteBufferSize: 256 * 1024}
		hdr := http.Header{"Authorization": {"Bearer " + s.SessionToken}}
		c, resp, err := d.Dial(wsURL, hdr)
		if err != nil {
			if resp != nil && (resp.StatusCode == 401 || resp.StatusCode == 403) {
				emit(map[string]interface{}{"event": "refused", "status": resp.StatusCode, "what": "tunnel"})
				os.Exit(3)
			}
			emit(map[string]interface{}{"event": "dial_failed", "error": err.Error()})
			time.Sleep(500 * time.Millisecond)
			continue
		}
		ws := &wsConn{c: c}
		sess, err := yamux.Server(ws, yamuxConfig(window))
		if err != nil {
			log.Fatal(err)
		}
		emit(map[string]interface{}{"event": "connected"})
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				break
			}
			go forward(st, fwd)
		}
		sess.Close()
		code := 0
		var ce *websocket.CloseError
		if errors.As(ws.readErr, &ce) {
			code = ce.Code
		}
		emit(map[string]interface{}{"event": "closed", "code": code})
		time.Sleep(200 * time.Millisecond)
	}
}

// ---------------------------------------------------------------- cloud stand-in

type cloud struct {
	mu     sync.Mutex
	sess   *yamux.Session
	window int
}

const standinToken = "vst_go-standin"

func (cl *cloud) current() *yamux.Session {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.sess
}

func (cl *cloud) pair(w http.ResponseWriter, r *http.Request) {
	var req map[string]string
	if json.NewDecoder(r.Body).Decode(&req) != nil || !strings.HasPrefix(req["pairing_token"], "vpt_") {
		http.Error(w, `{"error":{"code":"unauthorized","message":"The token is not valid."}}`, 401)
		return
	}
	emit(map[string]interface{}{"event": "pair", "serial_number": req["serial_number"], "device_type": req["device_type"]})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(201)
	json.NewEncoder(w).Encode(map[string]string{
		"device_id": "00000000-0000-4000-8000-000000000001", "session_token": standinToken,
		"expires_at": "2099-01-01T00:00:00Z",
	})
}

func (cl *cloud) status(w http.ResponseWriter, r *http.Request) {
	var req map[string]string
	json.NewDecoder(r.Body).Decode(&req)
	emit(map[string]interface{}{"event": "status", "usb_status": req["usb_status"],
		"authorized": r.Header.Get("Authorization") == "Bearer "+standinToken})
	w.WriteHeader(204)
}

func (cl *cloud) tunnel(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+standinToken {
		http.Error(w, `{"error":{"code":"unauthorized","message":"The token is not valid."}}`, 401)
		return
	}
	up := websocket.Upgrader{ReadBufferSize: 256 * 1024, WriteBufferSize: 256 * 1024}
	c, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	sess, err := yamux.Client(&wsConn{c: c}, yamuxConfig(cl.window))
	if err != nil {
		return
	}
	cl.mu.Lock()
	old := cl.sess
	cl.sess = sess
	cl.mu.Unlock()
	if old != nil {
		old.Close()
	}
	emit(map[string]interface{}{"event": "agent_connected"})
	<-sess.CloseChan()
	emit(map[string]interface{}{"event": "agent_disconnected"})
}

var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Authorization", "Cookie"}

func (cl *cloud) proxy(w http.ResponseWriter, r *http.Request) {
	sess := cl.current()
	if sess == nil || sess.IsClosed() {
		http.Error(w, `{"error":{"code":"device_offline","message":"not connected"}}`, 502)
		return
	}
	st, err := sess.OpenStream()
	if err != nil {
		http.Error(w, `{"error":{"code":"device_offline","message":"open failed"}}`, 502)
		return
	}
	defer st.Close()
	out := r.Clone(r.Context())
	out.URL.Path = strings.TrimPrefix(r.URL.Path, "/proxy")
	out.RequestURI = ""
	for _, h := range hopByHop {
		out.Header.Del(h)
	}
	out.Header.Set("X-Forwarded-For", r.RemoteAddr)
	out.Close = true
	bw := bufio.NewWriterSize(st, 64*1024)
	if err := out.Write(bw); err != nil || bw.Flush() != nil {
		http.Error(w, "write failed", 502)
		return
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(st, 256*1024), out)
	if err != nil {
		http.Error(w, "bad response", 502)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	for _, h := range hopByHop {
		w.Header().Del(h)
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 256*1024)
	io.CopyBuffer(w, resp.Body, buf)
}

func runCloud(listen string, window int) {
	cl := &cloud{window: window}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/agent/pair", cl.pair)
	mux.HandleFunc("/api/v1/agent/status", cl.status)
	mux.HandleFunc("/api/v1/agent/tunnel", cl.tunnel)
	mux.HandleFunc("/proxy/", cl.proxy)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	emit(map[string]interface{}{"event": "listening", "port": ln.Addr().(*net.TCPAddr).Port})
	log.Fatal(http.Serve(ln, mux))
}

func runHub(listen string, window int) {
	var mu sync.Mutex
	up := 0
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/agent/tunnel", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			http.Error(w, `{"error":{"code":"unauthorized","message":"The token is not valid."}}`, 401)
			return
		}
		upgrader := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		sess, err := yamux.Client(&wsConn{c: c}, yamuxConfig(window))
		if err != nil {
			return
		}
		mu.Lock()
		up++
		mu.Unlock()
		<-sess.CloseChan()
		mu.Lock()
		up--
		mu.Unlock()
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := up
		mu.Unlock()
		fmt.Fprintf(w, "%d", n)
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	emit(map[string]interface{}{"event": "listening", "port": ln.Addr().(*net.TCPAddr).Port})
	log.Fatal(http.Serve(ln, mux))
}

func main() {
	mode := flag.String("mode", "", "agent | cloud | hub | fleet | origin | load")
	server := flag.String("server", "", "agent: the cloud's base URL")
	token := flag.String("token", "", "agent: pairing token")
	fwd := flag.String("forward", "", "agent: local HOST:PORT")
	sessionFile := flag.String("session-file", "", "agent: where the session is kept")
	serial := flag.String("serial", "GO-AGENT-1", "agent: serial number")
	listen := flag.String("listen", "127.0.0.1:0", "cloud: listen address")
	window := flag.Int("window", 16*1024*1024, "receive window per stream (bytes)")
	url := flag.String("url", "", "load: URL to GET")
	auth := flag.String("auth", "", "load: Authorization header value")
	n := flag.Int("n", 1, "load: requests")
	workers := flag.Int("c", 1, "load: concurrent workers")
	newConn := flag.Bool("new-conn", false, "load: a new connection per request")
	tokens := flag.String("tokens", "", "fleet: file of session tokens, one per line")
	every := flag.Duration("every", 100*time.Millisecond, "fleet: progress line interval")
	handshake := flag.Duration("handshake-timeout", 10*time.Second, "fleet: upgrade timeout")
	flag.BoolVar(&yamuxLog, "yamux-log", false, "write hashicorp/yamux's log lines to stderr")
	flag.DurationVar(&keepAlive, "keepalive", 0, "yamux keepalive interval (0: hashicorp's 30 s)")
	flag.Parse()
	switch *mode {
	case "agent":
		runAgent(*server, *token, *fwd, *sessionFile, *serial, *window)
	case "cloud":
		runCloud(*listen, *window)
	case "hub":
		runHub(*listen, *window)
	case "fleet":
		runFleet(*server, *tokens, *every, *handshake, *window)
	case "origin":
		runOrigin(*listen)
	case "load":
		runLoad(*url, *auth, *n, *workers, *newConn)
	default:
		log.Fatalf("-mode must be agent, cloud, hub, fleet, origin or load")
	}
}
