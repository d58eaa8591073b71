package main

// -mode fleet: many agents in one process, for the scale benches (issue 27).
//
// Each session token of -tokens (one per line) is one agent. It opens its tunnel as
// `visiona agent` and -mode agent do: GET <server>/api/v1/agent/tunnel upgraded to a
// WebSocket (no subprotocol) with "Authorization: Bearer <token>", binary messages
// carrying one hashicorp/yamux session in which the agent is the yamux server (the
// config of -mode agent: hashicorp's defaults, pinging every 30 s and answering the
// server's pings, and -window, 16 MiB like `visiona agent`). Every stream
// the server opens is answered with a tiny HTTP answer (fleetAnswer) and closed.
//
// Reconnecting follows visiona/agent/runner.py:
//   - an upgrade answered with Retry-After (503 pacing, a draining node): that many
//     seconds plus up to half as much again (jitter);
//   - a close 1001 whose reason carries the reconnect hint ("server shutting down;
//     reconnect in 2.7 s", visiona/wire.py reconnect_hint): the hinted delay, and the
//     next 30 failures in a row wait 0.5-1 s each (the node is restarting) before the
//     backoff below resumes;
//   - a close 4409 (superseded by another agent of the device): 5 s doubling to 300 s;
//   - anything else: jittered exponential backoff 0.5 s doubling to 30 s (a draw
//     between half and all of the step), started over after a tunnel that stayed up
//     10 s;
//   - 401/403 on the upgrade: that agent stops (counted as "denied").
//
// Progress is a JSON line every -every (when something changed, and at least once a
// second): {"event":"progress","up":..,"connects":..,"refused":..,"failed":..,
// "denied":..,"closed":..,"answered":..,"statuses":{"503":..}} where up is the tunnels
// up now, connects the upgrades answered 101, refused those answered with another
// status (by status in statuses), failed the attempts without an HTTP answer (refused
// connection, reset, handshake timeout), closed the tunnels that ended, answered the
// streams answered. SIGTERM (or SIGINT) closes every tunnel (close 1000), prints a last
// progress line and {"event":"stopped"}, and exits 0.

import (
	"bufio"
	"bytes"
	"errors"
	"math"
	"math/rand"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

var fleetAnswer = []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

const (
	hintPrefix      = "; reconnect in "
	closeSuperseded = 4409
	stableAfter     = 10 * time.Second
)

// After a restart hint this many failures in a row wait restartStep s (jittered) each
// before the doubling resumes (runner.py RESTART_ATTEMPTS, RESTART_STEP).
const (
	restartAttempts = 30
	restartStep     = 1.0
)

// backoff: a draw between half and all of the current step, the step doubling to cap;
// after expectRestart the next restartAttempts draws are of restartStep instead.
type backoff struct {
	first, cap, next float64
	steady           int
}

func newBackoff(first, cap float64) *backoff { return &backoff{first: first, cap: cap, next: first} }
func (b *backoff) reset()                    { b.next, b.steady = b.first, 0 }
func (b *backoff) expectRestart()            { b.steady = restartAttempts }
func (b *backoff) delay() float64 {
	if b.steady > 0 {
		b.steady--
		return restartStep/2 + rand.Float64()*restartStep/2
	}
	step := b.next
	b.next = math.Min(b.cap, step*2)
	return step/2 + rand.Float64()*step/2
}

// retryAfter: the Retry-After header in seconds (0-3600), or -1 when absent or bad.
func retryAfter(resp *http.Response) float64 {
	v, err := strconv.ParseFloat(strings.TrimSpace(resp.Header.Get("Retry-After")), 64)
	if err != nil || math.IsNaN(v) {
		return -1
	}
	return math.Min(3600, math.Max(0, v))
}

// reconnectHint: the seconds a 1001 close's reason asks to wait (0-300), or -1.
func reconnectHint(code int, reason string) float64 {
	if code != websocket.CloseGoingAway || !strings.Contains(reason, hintPrefix) {
		return -1
	}
	text := reason[strings.LastIndex(reason, hintPrefix)+len(hintPrefix):]
	v, err := strconv.ParseFloat(strings.TrimSuffix(text, " s"), 64)
	if err != nil || math.IsNaN(v) {
		return -1
	}
	return math.Min(300, math.Max(0, v))
}

type fleet struct {
	url     string
	timeout time.Duration
	window  int
	stop    chan struct{}

	up, connects, refused, failed, denied, closed, answered int64

	mu       sync.Mutex
	statuses map[int]int64
	live     map[*websocket.Conn]struct{}
}

// outcome of one attempt: the refusal's status (0: none) and Retry-After, or how the
// tunnel ended.
type outcome struct {
	status     int
	retryAfter float64
	up         bool
	closeCode  int
	closeText  string
}

func (f *fleet) stopping() bool {
	select {
	case <-f.stop:
		return true
	default:
		return false
	}
}

func (f *fleet) sleep(seconds float64) {
	t := time.NewTimer(time.Duration(seconds * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-f.stop:
	}
}

func (f *fleet) agent(token string) {
	b := newBackoff(0.5, 30)
	superseded := newBackoff(5, 300)
	for !f.stopping() {
		started := time.Now()
		o := f.once(token)
		if o.status == 401 || o.status == 403 {
			atomic.AddInt64(&f.denied, 1)
			return
		}
		if f.stopping() {
			return
		}
		if o.up && o.closeCode == closeSuperseded {
			f.sleep(superseded.delay())
			continue
		}
		superseded.reset()
		if time.Since(started) >= stableAfter {
			b.reset()
		}
		hint := -1.0
		if o.up {
			hint = reconnectHint(o.closeCode, o.closeText)
		}
		if hint >= 0 { // the node restarts: come back at a steady pace for a while
			b.expectRestart()
		}
		asked := hint
		if o.retryAfter >= 0 {
			asked = o.retryAfter + rand.Float64()*o.retryAfter/2
		}
		if asked < 0 {
			asked = b.delay()
		}
		f.sleep(asked)
	}
}

func (f *fleet) once(token string) outcome {
	d := websocket.Dialer{HandshakeTimeout: f.timeout, ReadBufferSize: 4096, WriteBufferSize: 4096}
	c, resp, err := d.Dial(f.url, http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		if resp != nil && resp.StatusCode != 0 {
			atomic.AddInt64(&f.refused, 1)
			f.mu.Lock()
			f.statuses[resp.StatusCode]++
			f.mu.Unlock()
			return outcome{status: resp.StatusCode, retryAfter: retryAfter(resp)}
		}
		atomic.AddInt64(&f.failed, 1)
		return outcome{retryAfter: -1}
	}
	atomic.AddInt64(&f.connects, 1)
	ws := &wsConn{c: c}
	sess, err := yamux.Server(ws, yamuxConfig(f.window))
	if err != nil {
		c.Close()
		return outcome{retryAfter: -1}
	}
	f.mu.Lock()
	f.live[c] = struct{}{}
	f.mu.Unlock()
	atomic.AddInt64(&f.up, 1)
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		go f.answer(st)
	}
	sess.Close()
	atomic.AddInt64(&f.up, -1)
	atomic.AddInt64(&f.closed, 1)
	f.mu.Lock()
	delete(f.live, c)
	f.mu.Unlock()
	o := outcome{retryAfter: -1, up: true}
	var ce *websocket.CloseError
	if errors.As(ws.readErr, &ce) {
		o.closeCode, o.closeText = ce.Code, ce.Text
	}
	return o
}

// answer reads a request head and answers it with fleetAnswer, then half-closes.
func (f *fleet) answer(st *yamux.Stream) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReaderSize(st, 1024)
	var head []byte
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		line, err := r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
		head = append(head, line...)
	}
	if _, err := st.Write(fleetAnswer); err == nil {
		atomic.AddInt64(&f.answered, 1)
	}
}

func (f *fleet) progress(event string) map[string]interface{} {
	f.mu.Lock()
	statuses := make(map[string]int64, len(f.statuses))
	for k, v := range f.statuses {
		statuses[strconv.Itoa(k)] = v
	}
	f.mu.Unlock()
	return map[string]interface{}{
		"event": event, "up": atomic.LoadInt64(&f.up), "connects": atomic.LoadInt64(&f.connects),
		"refused": atomic.LoadInt64(&f.refused), "failed": atomic.LoadInt64(&f.failed),
		"denied": atomic.LoadInt64(&f.denied), "closed": atomic.LoadInt64(&f.closed),
		"answered": atomic.LoadInt64(&f.answered), "statuses": statuses,
	}
}

func readTokens(path string) ([]string, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var tokens []string
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		if t := strings.TrimSpace(scanner.Text()); t != "" {
			tokens = append(tokens, t)
		}
	}
	return tokens, scanner.Err()
}

func runFleet(server, tokensFile string, every, timeout time.Duration, window int) {
	tokens, err := readTokens(tokensFile)
	if err != nil {
		emit(map[string]interface{}{"event": "error", "error": err.Error()})
		os.Exit(2)
	}
	f := &fleet{
		url:      "ws" + strings.TrimPrefix(strings.TrimRight(server, "/"), "http") + "/api/v1/agent/tunnel",
		timeout:  timeout,
		window:   window,
		stop:     make(chan struct{}),
		statuses: map[int]int64{},
		live:     map[*websocket.Conn]struct{}{},
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	emit(map[string]interface{}{"event": "started", "agents": len(tokens)})
	var agents sync.WaitGroup
	for _, t := range tokens {
		agents.Add(1)
		go func(t string) {
			defer agents.Done()
			f.agent(t)
		}(t)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	last, lastAt := "", time.Time{}
	for {
		select {
		case <-tick.C:
			p := f.progress("progress")
			key := fmtKey(p)
			if key != last || time.Since(lastAt) >= time.Second {
				emit(p)
				last, lastAt = key, time.Now()
			}
		case <-signals:
			close(f.stop)
			f.mu.Lock()
			conns := make([]*websocket.Conn, 0, len(f.live))
			for c := range f.live {
				conns = append(conns, c)
			}
			f.mu.Unlock()
			bye := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
			for _, c := range conns {
				c.WriteControl(websocket.CloseMessage, bye, time.Now().Add(time.Second))
				c.Close()
			}
			waited := make(chan struct{})
			go func() { agents.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(15 * time.Second): // a handshake still pending: its timeout
			}
			emit(f.progress("progress"))
			emit(map[string]interface{}{"event": "stopped"})
			os.Exit(0)
		}
	}
}

func fmtKey(p map[string]interface{}) string {
	var sb strings.Builder
	for _, k := range []string{"up", "connects", "refused", "failed", "denied", "closed", "answered"} {
		sb.WriteString(strconv.FormatInt(p[k].(int64), 10))
		sb.WriteByte(' ')
	}
	return sb.String()
}
