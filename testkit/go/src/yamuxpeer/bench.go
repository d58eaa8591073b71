package main

import (
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair() (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	return client, <-accepted
}

func writeAll(w io.Writer, total int, chunk []byte) {
	for sent := 0; sent < total; {
		n := len(chunk)
		if total-sent < n {
			n = total - sent
		}
		if _, err := w.Write(chunk[:n]); err != nil {
			log.Fatal(err)
		}
		sent += n
	}
}

// drain reads r to EOF with a 256 KiB buffer (io.Copy to ioutil.Discard would use
// 8 KiB reads, which is not what a tuned reader does).
func drain(r io.Reader) error {
	buf := make([]byte, 256*1024)
	for {
		_, err := r.Read(buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func benchRawTCP(total int) float64 {
	a, b := tcpPair()
	chunk := randomBytes(1 << 20)
	start := time.Now()
	go func() {
		writeAll(a, total, chunk)
		a.Close()
	}()
	if err := drain(b); err != nil {
		log.Fatal(err)
	}
	b.Close()
	return float64(total) / time.Since(start).Seconds() / 1e6
}

func benchYamux(total, streams, window int, writeSize int) float64 {
	a, b := tcpPair()
	cfg := yamuxConfig(window, 0)
	cfg.EnableKeepAlive = false
	client, _ := yamux.Client(a, cfg)
	server, _ := yamux.Server(b, cfg)
	defer client.Close()
	defer server.Close()
	chunk := randomBytes(writeSize)
	per := total / streams
	var wg sync.WaitGroup
	wg.Add(streams)
	go func() {
		for i := 0; i < streams; i++ {
			st, err := server.AcceptStream()
			if err != nil {
				log.Fatal(err)
			}
			go func() {
				defer wg.Done()
				if err := drain(st); err != nil {
					log.Fatal(err)
				}
				st.Close()
			}()
		}
	}()
	start := time.Now()
	for i := 0; i < streams; i++ {
		go func() {
			st, err := client.OpenStream()
			if err != nil {
				log.Fatal(err)
			}
			writeAll(st, per, chunk)
			st.Close()
		}()
	}
	wg.Wait()
	return float64(per*streams) / time.Since(start).Seconds() / 1e6
}

func runBench(total, window int) {
	emit(map[string]interface{}{"event": "bench", "name": "raw_tcp", "mbps": benchRawTCP(total)})
	for _, streams := range []int{1, 8} {
		emit(map[string]interface{}{
			"event": "bench", "name": "yamux", "streams": streams, "window": window,
			"mbps": benchYamux(total, streams, window, 256*1024),
		})
	}
	emit(map[string]interface{}{
		"event": "bench", "name": "yamux_ws", "streams": 1, "window": window,
		"mbps": benchYamuxWS(total, window),
	})
	// Tiny writes: 16-byte writes on one stream; writes and data frames both counted.
	writes, frames := benchTiny(200000, 16, window)
	emit(map[string]interface{}{
		"event": "bench", "name": "tiny", "size": 16,
		"writes_per_s": writes, "frames_per_s": frames,
	})
}

// acceptAndDrain accepts one stream on server and reads it to EOF; the channel closes then.
func acceptAndDrain(server *yamux.Session) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		st, err := server.AcceptStream()
		if err != nil {
			log.Fatal(err)
		}
		if err := drain(st); err != nil {
			log.Fatal(err)
		}
		close(done)
	}()
	return done
}

// frameCounter passes a yamux byte stream through and counts the data frames in it,
// parsing the 12-byte headers (version, type, flags, stream id, length) as they pass.
type frameCounter struct {
	net.Conn
	header     [12]byte
	have       int // header bytes seen of the current frame
	body       int // body bytes of the current data frame still to pass
	dataFrames int
}

func (f *frameCounter) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	for buf := p[:n]; len(buf) > 0; {
		if f.body > 0 {
			skip := f.body
			if skip > len(buf) {
				skip = len(buf)
			}
			f.body -= skip
			buf = buf[skip:]
			continue
		}
		c := copy(f.header[f.have:], buf)
		f.have += c
		buf = buf[c:]
		if f.have == 12 {
			f.have = 0
			length := int(f.header[8])<<24 | int(f.header[9])<<16 | int(f.header[10])<<8 | int(f.header[11])
			if f.header[1] == 0 { // type Data: the length is the body's
				f.body = length
				if length > 0 {
					f.dataFrames++
				}
			}
		}
	}
	return n, err
}

// benchTiny makes count writes of size bytes on one stream; returns writes/s and the
// data frames/s that reached the other side (hashicorp/yamux sends one frame a write).
func benchTiny(count, size, window int) (float64, float64) {
	a, b := tcpPair()
	counter := &frameCounter{Conn: b}
	cfg := yamuxConfig(window, 0)
	cfg.EnableKeepAlive = false
	client, _ := yamux.Client(a, cfg)
	server, _ := yamux.Server(counter, cfg)
	defer client.Close()
	defer server.Close()
	payload := randomBytes(size)
	done := acceptAndDrain(server)
	start := time.Now()
	st, err := client.OpenStream()
	if err != nil {
		log.Fatal(err)
	}
	for i := 0; i < count; i++ {
		if _, err := st.Write(payload); err != nil {
			log.Fatal(err)
		}
	}
	st.Close()
	<-done
	elapsed := time.Since(start).Seconds()
	return float64(count) / elapsed, float64(counter.dataFrames) / elapsed
}

// wsPair returns both ends of a loopback WebSocket, as byte streams.
func wsPair() (io.ReadWriteCloser, io.ReadWriteCloser) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	accepted := make(chan *websocket.Conn, 1)
	upgrader := websocket.Upgrader{ReadBufferSize: 64 * 1024, WriteBufferSize: 64 * 1024}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			log.Fatal(err)
		}
		accepted <- c
	})}
	go srv.Serve(ln)
	d := websocket.Dialer{ReadBufferSize: 64 * 1024, WriteBufferSize: 64 * 1024}
	client, _, err := d.Dial("ws://"+ln.Addr().String()+"/", nil)
	if err != nil {
		log.Fatal(err)
	}
	server := <-accepted
	ln.Close()
	return &wsConn{c: client}, &wsConn{c: server}
}

// benchYamuxWS sends total bytes on one stream, yamux over a loopback WebSocket.
func benchYamuxWS(total, window int) float64 {
	a, b := wsPair()
	cfg := yamuxConfig(window, 0)
	cfg.EnableKeepAlive = false
	client, _ := yamux.Client(a, cfg)
	server, _ := yamux.Server(b, cfg)
	defer client.Close()
	defer server.Close()
	chunk := randomBytes(256 * 1024)
	done := acceptAndDrain(server)
	start := time.Now()
	st, err := client.OpenStream()
	if err != nil {
		log.Fatal(err)
	}
	writeAll(st, total, chunk)
	st.Close()
	<-done
	return float64(total) / time.Since(start).Seconds() / 1e6
}
