package main

// Bench helpers of the tunnel bench: the origin (the device's local HTTP service) and a
// load client, so every path (direct, Go pair, Python pair) is driven by the same code.

import (
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

var block = func() []byte {
	b := make([]byte, 256*1024)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}()

// runOrigin serves /bytes/<n> (n bytes, Content-Length) and /tiny (2 bytes).
func runOrigin(listen string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes/", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/bytes/"), 10, 64)
		if err != nil {
			http.Error(w, "bad size", 400)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		for n > 0 {
			chunk := block
			if int64(len(chunk)) > n {
				chunk = chunk[:n]
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
			n -= int64(len(chunk))
		}
	})
	mux.HandleFunc("/tiny", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2")
		w.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	emit(map[string]interface{}{"event": "listening", "port": ln.Addr().(*net.TCPAddr).Port})
	log.Fatal(http.Serve(ln, mux))
}

func fetch(client *http.Client, url, auth string, buf []byte) (int64, error) {
	req, _ := http.NewRequest("GET", url, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.CopyBuffer(ioutil.Discard, resp.Body, buf)
	if resp.StatusCode != 200 {
		return n, &httpError{resp.StatusCode}
	}
	return n, err
}

type httpError struct{ status int }

func (e *httpError) Error() string { return "HTTP " + strconv.Itoa(e.status) }

// runLoad does -n GETs of -url from -c workers; -new-conn opens a connection per request.
func runLoad(url, auth string, n, workers int, newConn bool) {
	tr := &http.Transport{DisableKeepAlives: newConn, MaxIdleConnsPerHost: workers, DisableCompression: true}
	client := &http.Client{Transport: tr}
	lat := make([]float64, 0, n)
	var mu sync.Mutex
	var total int64
	var failed error
	next := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		next <- struct{}{}
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256*1024)
			for range next {
				t0 := time.Now()
				got, err := fetch(client, url, auth, buf)
				d := time.Since(t0).Seconds()
				mu.Lock()
				total += got
				lat = append(lat, d)
				if err != nil && failed == nil {
					failed = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	sort.Float64s(lat)
	pct := func(q float64) float64 { return lat[int(q*float64(len(lat)-1))] * 1000 }
	ev := map[string]interface{}{
		"event": "load", "requests": len(lat), "seconds": secs, "bytes": total,
		"mbps": float64(total) / secs / 1e6, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
	}
	if failed != nil {
		ev["error"] = failed.Error()
	}
	emit(ev)
}
