package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// chunked frames body parts as HTTP chunks, the way gunicorn sends each yield of a stream.
func chunked(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		fmt.Fprintf(&b, "%x\r\n%s\r\n", len(p), p)
	}
	return b.String()
}

func newTestClient() *client {
	c := &client{latency: make([]atomic.Uint32, histogramMs+1), errCounts: map[string]int{}}
	c.lo.Store(1)
	c.hi.Store(100)
	c.recorded.Store(1)
	return c
}

func event(seq int, sent float64) string {
	return fmt.Sprintf("id: 1-%d\nevent: bench\ndata: {\"seq\":%d,\"ts\":%.6f,\"body\":\"xx\"}\n\n", seq, seq, sent)
}

// Every split of the bytes between two reads gives the same counts: an event, a chunk-size line
// or a heartbeat cut anywhere is put back together.
func TestFeedCountsEventsAndHeartbeatsCutAnywhere(t *testing.T) {
	body := func(sent float64) string {
		return chunked("retry: 3000\n\n", ": heartbeat\n\n", event(1, sent)+event(2, sent), event(3, sent),
			": heartbeat\n\n", event(3, sent), event(0, sent), event(100, sent))
	}
	for cut := 0; cut <= len(body(0)); cut++ {
		body := body(float64(time.Now().UnixNano())/1e9 - 0.25) // sent 250 ms ago
		c := newTestClient()
		s := &stream{chunked: true}
		s.last.Store(-1)
		c.feed(s, []byte(body[:cut]))
		c.feed(s, []byte(body[cut:]))
		if got := s.received.Load(); got != 3 {
			t.Fatalf("cut at %d: received %d events, want 3 (seq 0 and 100 are outside [1, 100))", cut, got)
		}
		if got := s.duplicates.Load(); got != 1 {
			t.Fatalf("cut at %d: %d duplicates, want 1", cut, got)
		}
		if got := s.heartbeats.Load(); got != 2 {
			t.Fatalf("cut at %d: %d heartbeats, want 2", cut, got)
		}
		near := uint32(0)
		for ms := 249; ms < 1000; ms++ { // sent 250 ms ago; a busy machine may take a while to get here
			near += c.latency[ms].Load()
		}
		if near != 3 {
			t.Fatalf("cut at %d: %d latencies of 250 ms or a little more, want 3", cut, near)
		}
	}
}

func TestFeedReadsAnUnchunkedBody(t *testing.T) {
	c := newTestClient()
	s := &stream{}
	s.last.Store(-1)
	c.feed(s, []byte("retry: 3000\n\n"+event(2, 0)+event(1, 0)+event(2, 0)+": heartbeat\n\n"))
	if s.received.Load() != 2 || s.outOfOrder.Load() != 1 || s.duplicates.Load() != 1 || s.heartbeats.Load() != 1 {
		t.Fatalf("received %d, out of order %d, duplicates %d, heartbeats %d; want 2, 1, 1, 1",
			s.received.Load(), s.outOfOrder.Load(), s.duplicates.Load(), s.heartbeats.Load())
	}
}
