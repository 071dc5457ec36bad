// Command memberlist-detect measures HashiCorp memberlist's crash detection on loopback, the same way
// `rampart detect live` measures Rampart's: N members on 127.0.0.1 with DefaultLANConfig, one shut down
// without leaving (its sockets close, as in a crash), and the time until every survivor reports it gone.
// Every wait is bounded; only 127.0.0.1 is used.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

type watcher struct {
	mu     sync.Mutex
	target string
	at     time.Time
	done   chan struct{}
}

func (w *watcher) NotifyJoin(*memberlist.Node)   {}
func (w *watcher) NotifyUpdate(*memberlist.Node) {}
func (w *watcher) NotifyLeave(n *memberlist.Node) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n.Name == w.target && w.at.IsZero() {
		w.at = time.Now()
		close(w.done)
	}
}

func trial(n, port int) (time.Duration, error) {
	target := fmt.Sprintf("m%d", n-1)
	members := make([]*memberlist.Memberlist, n)
	watchers := make([]*watcher, n)
	for i := 0; i < n; i++ {
		watchers[i] = &watcher{target: target, done: make(chan struct{})}
		cfg := memberlist.DefaultLANConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.BindAddr, cfg.AdvertiseAddr = "127.0.0.1", "127.0.0.1"
		cfg.BindPort, cfg.AdvertisePort = port+i, port+i
		cfg.LogOutput = io.Discard
		cfg.Events = watchers[i]
		m, err := memberlist.Create(cfg)
		if err != nil {
			return 0, err
		}
		defer m.Shutdown()
		members[i] = m
		if i > 0 {
			if _, err := m.Join([]string{fmt.Sprintf("127.0.0.1:%d", port)}); err != nil {
				return 0, err
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		for _, m := range members {
			ok = ok && m.NumMembers() == n
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("cluster did not form in 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // let the cluster settle, as the Rampart side does
	killed := time.Now()
	members[n-1].Shutdown()
	var worst time.Duration
	for i := 0; i < n-1; i++ {
		select {
		case <-watchers[i].done:
			if d := watchers[i].at.Sub(killed); d > worst {
				worst = d
			}
		case <-time.After(60 * time.Second):
			return 0, fmt.Errorf("m%d never saw %s leave", i, target)
		}
	}
	return worst, nil
}

func main() {
	n := flag.Int("nodes", 5, "cluster size")
	trials := flag.Int("trials", 3, "kills to measure")
	port := flag.Int("port", 27946, "first port; each member and trial uses the next ones")
	asJSON := flag.Bool("json", false, "one JSON object")
	flag.Parse()
	var ms []float64
	for t := 0; t < *trials; t++ {
		d, err := trial(*n, *port+t*(*n))
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
		ms = append(ms, float64(d.Microseconds())/1000)
	}
	sorted := append([]float64(nil), ms...)
	sort.Float64s(sorted)
	out := map[string]any{"detector": "memberlist", "nodes": *n, "trials_ms": ms, "detect_median_ms": sorted[len(sorted)/2], "detect_max_ms": sorted[len(sorted)-1]}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(out)
		return
	}
	fmt.Printf("memberlist  nodes=%d  cluster-wide detection per kill (ms): %v  median %.0f  max %.0f\n", *n, ms, out["detect_median_ms"], out["detect_max_ms"])
}
