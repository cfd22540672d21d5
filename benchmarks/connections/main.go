// Command connections holds many SSE connections to one relay and measures what reaches them.
//
// It is the load client of benchmarks/connections.py, which starts several of these processes
// (each holds at most its open-file limit of connections) and drives them over stdin/stdout,
// one command per line, one JSON answer per line:
//
//	connect N      open N streams (spread over -sources), answer when all opened or gave up
//	mark           zero the heartbeat counters
//	record LO HI   zero the delivery counters; count events whose seq is in [LO, HI)
//	progress       deliveries counted so far, open and closed streams
//	report         the figures: per-stream received counts, duplicates, latency histogram
//	quit           close every stream and exit (so does end of input)
//
// Connections are opened with Go's net package (a few dozen handshakes at a time), then handed to
// one epoll loop on one thread (see loop). Standard library only.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

const (
	histogramMs         = 120_000 // latency buckets of 1 ms; the last one holds everything slower
	ipBindAddressNoPort = 24      // IP_BIND_ADDRESS_NO_PORT: pick the port at connect(), per 4-tuple
)

var (
	target      = flag.String("target", "127.0.0.1:8000", "relay's host:port")
	path        = flag.String("path", "/events/bench", "the stream's path")
	sources     = flag.String("sources", "127.0.0.1", "comma-separated local addresses to connect from")
	first       = flag.Int("first", 0, "global index of this process's first connection (spreads sources)")
	concurrency = flag.Int("concurrency", 64, "handshakes in flight")
	retries     = flag.Int("retries", 30, "attempts per connection when refused (503/429, reset, timeout)")
	deadline    = flag.Duration("connect-timeout", 300*time.Second, "the whole connect phase gives up after this")
)

// stream is one SSE connection: its socket, where its parser stands, and its counters.
type stream struct {
	fd         int
	chunked    bool         // the body comes in HTTP chunks (gunicorn's generator responses do)
	chunkLeft  int          // bytes of the current chunk still to come
	chunkSkip  int          // bytes of the CRLF after a chunk still to skip
	sizeLine   []byte       // an incomplete chunk-size line
	line       []byte       // an incomplete SSE line
	seen       []uint64     // bitmap of the seqs received in the recorded range (epoll loop only)
	generation int64        // the record command seen was made for
	last       atomic.Int64 // highest seq seen in the recorded range
	received   atomic.Int32 // distinct seqs in range
	duplicates atomic.Int32
	outOfOrder atomic.Int32
	heartbeats atomic.Int32
	closed     atomic.Bool
}

type client struct {
	mu        sync.Mutex
	streams   []*stream
	byFD      []atomic.Pointer[stream] // what the epoll loop looks up; fds stay below the open-file limit
	epfd      int
	lo, hi    atomic.Int64
	recorded  atomic.Int64 // generation of the current record command
	latency   []atomic.Uint32
	quitting  atomic.Bool
	request   []byte
	localIPs  []net.IP
	errCounts map[string]int
	retried   atomic.Int64
}

func main() {
	flag.Parse()
	debug.SetGCPercent(400) // the heap is mostly buffers that live as long as the process
	var limit syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit) // Go raised the soft limit to the hard one
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		fmt.Fprintf(os.Stderr, "epoll: %v\n", err)
		os.Exit(1)
	}
	c := &client{latency: make([]atomic.Uint32, histogramMs+1), errCounts: map[string]int{}, epfd: epfd,
		byFD: make([]atomic.Pointer[stream], limit.Cur+1)}
	host, _, _ := net.SplitHostPort(*target)
	c.request = []byte("GET " + *path + " HTTP/1.1\r\nHost: " + host + "\r\nAccept: text/event-stream\r\n" +
		"Cache-Control: no-cache\r\nUser-Agent: relay-connections-bench\r\n\r\n")
	for _, s := range strings.Split(*sources, ",") {
		ip := net.ParseIP(strings.TrimSpace(s)).To4()
		if ip == nil {
			fmt.Fprintf(os.Stderr, "not an IPv4 address: %q\n", s)
			os.Exit(2)
		}
		c.localIPs = append(c.localIPs, ip)
	}
	c.lo.Store(0)
	c.hi.Store(-1)
	go c.loop()
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			continue
		}
		var answer any
		switch fields[0] {
		case "connect":
			n, _ := strconv.Atoi(fields[1])
			answer = c.connect(n)
		case "mark":
			c.each(func(s *stream) { s.heartbeats.Store(0) })
			answer = map[string]any{}
		case "record":
			lo, _ := strconv.ParseInt(fields[1], 10, 64)
			hi, _ := strconv.ParseInt(fields[2], 10, 64)
			c.record(lo, hi)
			answer = map[string]any{}
		case "progress":
			answer = c.progress()
		case "report":
			answer = c.report()
		case "quit":
			c.close()
			_ = out.Encode(map[string]any{})
			return
		default:
			answer = map[string]any{"error": "unknown command " + fields[0]}
		}
		if err := out.Encode(answer); err != nil {
			break
		}
	}
	c.close() // end of input: the coordinator is gone
}

func (c *client) each(f func(*stream)) {
	c.mu.Lock()
	streams := c.streams
	c.mu.Unlock()
	for _, s := range streams {
		f(s)
	}
}

func (c *client) close() {
	c.quitting.Store(true)
	c.each(func(s *stream) {
		if !s.closed.Swap(true) {
			_ = syscall.Close(s.fd)
		}
	})
}

// loop reads every open stream: one thread, one epoll_wait per batch of ready sockets and one
// read per ready socket. Both are raw system calls that keep this goroutine's P, so Go's
// scheduler never hands the P off and back around them: with Go's own blocking calls (or a
// goroutine per connection), every wake-up went through sysmon, futexes and thread switches,
// ~100 µs of CPU per delivery in this VM (perf: finish_task_switch); now a delivery costs a read.
// It needs GOMAXPROCS >= 2, so the command loop keeps a P of its own.
func (c *client) loop() {
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 1024)
	buf := make([]byte, 64*1024)
	for {
		r, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(c.epfd),
			uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 100, 0, 0)
		// A raw system call has no preemption point, and neither does this loop: yield here, so a
		// stop-the-world (Go interrupts the wait with a signal to ask for it) never waits for the
		// next event to come. Without it, every GC during the connect burst stalled every handshake.
		runtime.Gosched()
		if errno != 0 {
			if errno == syscall.EINTR {
				continue
			}
			fmt.Fprintf(os.Stderr, "epoll_pwait: %v\n", errno)
			os.Exit(1)
		}
		for i := 0; i < int(r); i++ {
			fd := int(events[i].Fd)
			s := c.byFD[fd].Load()
			if s == nil || s.fd != fd {
				continue
			}
			for {
				m, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])),
					uintptr(len(buf)))
				if n := int(m); errno == 0 && n > 0 {
					c.feed(s, buf[:n])
					if n < len(buf) {
						break
					}
					continue
				}
				if errno == syscall.EAGAIN {
					break
				}
				if errno == syscall.EINTR {
					continue
				}
				var err error = io.EOF
				if errno != 0 {
					err = errno
				}
				c.finish(s, err)
				break
			}
		}
		if r > 0 && int(r) < len(events)/4 {
			// Few sockets were ready: let more data come before the next epoll_wait, so a fan-out
			// spread over a second costs one wake-up per millisecond, not one per delivery (each
			// wake-up is a context switch, the dearest thing here). Latency gains at most 1 ms.
			sleep := syscall.Timespec{Nsec: 1_000_000}
			syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&sleep)), 0, 0)
		}
	}
}

// finish closes a stream the server ended (or that failed).
func (c *client) finish(s *stream, err error) {
	c.byFD[s.fd].Store(nil)
	_ = syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_DEL, s.fd, nil)
	if !s.closed.Swap(true) {
		_ = syscall.Close(s.fd)
		if !c.quitting.Load() {
			c.countError(fmt.Errorf("stream ended: %w", err))
		}
	}
}

// connect opens n streams, at most -concurrency handshakes at a time; a refused one is retried.
func (c *client) connect(n int) map[string]any {
	start := time.Now()
	giveUp := start.Add(*deadline)
	slots := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	for i := 0; i < n; i++ {
		slots <- struct{}{}
		wg.Add(1)
		go func(index int) {
			defer wg.Done()
			defer func() { <-slots }()
			if err := c.open(index, giveUp); err != nil {
				failed.Add(1)
				c.countError(err)
				return
			}
			ok.Add(1)
		}(*first + i)
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	c.mu.Lock()
	errs := make(map[string]int, len(c.errCounts))
	for k, v := range c.errCounts {
		errs[k] = v
	}
	c.mu.Unlock()
	return map[string]any{"ok": ok.Load(), "failed": failed.Load(), "seconds": seconds, "errors": errs,
		"retries": c.retried.Load()}
}

// open dials from source index % len(sources), reads the response head, then hands the socket to
// the epoll loop; a refusal (503/429, reset, timeout) is retried after a pause, as EventSource does.
func (c *client) open(index int, giveUp time.Time) error {
	local := &net.TCPAddr{IP: c.localIPs[index%len(c.localIPs)]}
	dialer := net.Dialer{Timeout: 10 * time.Second, LocalAddr: local, Control: bindNoPort}
	var err error
	for attempt := 0; attempt < *retries && time.Now().Before(giveUp); attempt++ {
		if attempt > 0 {
			c.retried.Add(1)
			time.Sleep(time.Duration(500+rand.Intn(1000)) * time.Millisecond)
		}
		var conn net.Conn
		conn, err = dialer.Dial("tcp", *target)
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.EADDRNOTAVAIL) {
				return err // a local limit: retrying cannot help
			}
			continue
		}
		s, rest, herr := c.handshake(conn)
		if herr != nil {
			conn.Close()
			err = herr
			continue
		}
		// The epoll loop takes over a duplicate of the socket; Go's copy is closed (close, not
		// shutdown: the connection stays open).
		s.fd, err = dupFD(conn)
		conn.Close()
		if err != nil {
			return err
		}
		s.last.Store(-1)
		c.feed(s, rest)
		c.mu.Lock()
		c.streams = append(c.streams, s)
		c.mu.Unlock()
		c.byFD[s.fd].Store(s)
		event := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(s.fd)}
		if err = syscall.EpollCtl(c.epfd, syscall.EPOLL_CTL_ADD, s.fd, &event); err != nil {
			return err
		}
		return nil
	}
	return err
}

func bindNoPort(network, address string, raw syscall.RawConn) error {
	var sockErr error
	err := raw.Control(func(fd uintptr) {
		sockErr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return sockErr
}

func dupFD(conn net.Conn) (int, error) {
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, dupErr := -1, error(nil)
	if err = raw.Control(func(f uintptr) { fd, dupErr = syscall.Dup(int(f)) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, dupErr
	}
	syscall.CloseOnExec(fd)
	return fd, syscall.SetNonblock(fd, true)
}

type statusError struct{ status int }

func (e statusError) Error() string { return fmt.Sprintf("HTTP %d", e.status) }

// handshake sends the request and reads the response head; it returns the new stream and the
// body bytes that came with the head.
func (c *client) handshake(conn net.Conn) (*stream, []byte, error) {
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(c.request); err != nil {
		return nil, nil, err
	}
	var got []byte
	chunk := make([]byte, 2048)
	for {
		n, err := conn.Read(chunk)
		got = append(got, chunk[:n]...)
		if end := bytes.Index(got, []byte("\r\n\r\n")); end >= 0 {
			head := strings.Split(string(got[:end]), "\r\n")
			parts := strings.Fields(head[0])
			if len(parts) < 2 {
				return nil, nil, fmt.Errorf("bad status line")
			}
			if status, _ := strconv.Atoi(parts[1]); status != 200 {
				return nil, nil, statusError{status}
			}
			s := &stream{}
			for _, header := range head[1:] {
				lower := strings.ToLower(header)
				if strings.HasPrefix(lower, "transfer-encoding:") && strings.Contains(lower, "chunked") {
					s.chunked = true
				}
			}
			return s, append([]byte(nil), got[end+4:]...), nil
		}
		if err != nil {
			return nil, nil, err
		}
		if len(got) > 16384 {
			return nil, nil, fmt.Errorf("response head over 16 KB")
		}
	}
}

// feed takes the bytes read from a stream: it removes the chunk framing, if any, then splits lines.
func (c *client) feed(s *stream, data []byte) {
	if !s.chunked {
		c.lines(s, data)
		return
	}
	for len(data) > 0 {
		switch {
		case s.chunkLeft > 0:
			n := min(s.chunkLeft, len(data))
			c.lines(s, data[:n])
			data = data[n:]
			if s.chunkLeft -= n; s.chunkLeft == 0 {
				s.chunkSkip = 2
			}
		case s.chunkSkip > 0:
			n := min(s.chunkSkip, len(data))
			data = data[n:]
			s.chunkSkip -= n
		default:
			eol := bytes.IndexByte(data, '\n')
			if eol < 0 {
				s.sizeLine = append(s.sizeLine, data...)
				return
			}
			line := data[:eol]
			if len(s.sizeLine) > 0 {
				line = append(s.sizeLine, line...)
				s.sizeLine = nil
			}
			data = data[eol+1:]
			if cut := bytes.IndexAny(line, ";\r"); cut >= 0 {
				line = line[:cut]
			}
			size, err := strconv.ParseInt(string(line), 16, 64)
			if err != nil || size == 0 {
				return // the last chunk (the server ends the stream) or a framing error
			}
			s.chunkLeft = int(size)
		}
	}
}

// lines hands each complete SSE line to onLine; an incomplete one waits for the next read.
func (c *client) lines(s *stream, data []byte) {
	for len(data) > 0 {
		eol := bytes.IndexByte(data, '\n')
		if eol < 0 {
			if len(s.line) < 4096 {
				s.line = append(s.line, data...)
			}
			return
		}
		line := data[:eol]
		if len(s.line) > 0 {
			line = append(s.line, line...)
			s.line = nil
		}
		data = data[eol+1:]
		if bytes.HasPrefix(line, dataPrefix) {
			c.onData(s, line)
		} else if bytes.HasPrefix(line, heartbeat) {
			s.heartbeats.Add(1)
		}
	}
}

var (
	dataPrefix = []byte("data:")
	heartbeat  = []byte(": heartbeat")
	seqKey     = []byte(`"seq":`)
	tsKey      = []byte(`"ts":`)
)

func (c *client) onData(s *stream, line []byte) {
	seq, ok := intAfter(line, seqKey)
	if !ok || seq < c.lo.Load() || seq >= c.hi.Load() {
		return
	}
	at := bytes.Index(line, tsKey)
	if at < 0 {
		return
	}
	rest := line[at+len(tsKey):]
	end := bytes.IndexAny(rest, ",}")
	if end < 0 {
		return
	}
	sent, err := strconv.ParseFloat(string(bytes.TrimSpace(rest[:end])), 64)
	if err != nil {
		return
	}
	// A bitmap, not "above the last one": events published at once by several requests may be
	// delivered in another order than they were sent (relay's order is the backbone's), and each
	// of them must still count once.
	if generation := c.recorded.Load(); s.generation != generation {
		s.seen, s.generation = make([]uint64, (c.hi.Load()-c.lo.Load()+63)/64), generation
	}
	index := seq - c.lo.Load()
	word, bit := index/64, uint64(1)<<(index%64)
	if word >= int64(len(s.seen)) {
		return
	}
	if s.seen[word]&bit != 0 {
		s.duplicates.Add(1)
		return
	}
	s.seen[word] |= bit
	if seq < s.last.Load() {
		s.outOfOrder.Add(1)
	} else {
		s.last.Store(seq)
	}
	s.received.Add(1)
	ms := int((float64(time.Now().UnixNano())/1e9 - sent) * 1000)
	if ms < 0 {
		ms = 0
	} else if ms > histogramMs {
		ms = histogramMs
	}
	c.latency[ms].Add(1)
}

func intAfter(line, key []byte) (int64, bool) {
	at := bytes.Index(line, key)
	if at < 0 {
		return 0, false
	}
	var n int64
	digits := 0
	for _, b := range line[at+len(key):] {
		if b == ' ' && digits == 0 {
			continue
		}
		if b < '0' || b > '9' {
			break
		}
		n = n*10 + int64(b-'0')
		digits++
	}
	return n, digits > 0
}

func (c *client) record(lo, hi int64) {
	c.hi.Store(-1) // nothing counts while the counters are zeroed
	c.each(func(s *stream) {
		s.last.Store(-1)
		s.received.Store(0)
		s.duplicates.Store(0)
		s.outOfOrder.Store(0)
	})
	for i := range c.latency {
		c.latency[i].Store(0)
	}
	c.lo.Store(lo)
	c.recorded.Add(1)
	c.hi.Store(hi)
}

func (c *client) countError(err error) {
	kind := classify(err)
	if strings.HasPrefix(err.Error(), "stream ended: ") {
		kind = "stream ended: " + kind
	}
	c.mu.Lock()
	c.errCounts[kind]++
	c.mu.Unlock()
}

// classify names an error without its addresses, so errors of one kind add up.
func classify(err error) string {
	var status statusError
	switch {
	case errors.As(err, &status):
		return status.Error()
	case errors.Is(err, syscall.EMFILE):
		return "EMFILE (open-file limit)"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "EADDRNOTAVAIL (no local port left)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ECONNREFUSED"
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "ETIMEDOUT"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "EOF"
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return "timeout"
	}
	text := err.Error()
	if i := strings.LastIndex(text, ": "); i >= 0 {
		text = text[i+2:]
	}
	return text
}

func (c *client) progress() map[string]any {
	var received, open, closed, heartbeats int64
	c.each(func(s *stream) {
		received += int64(s.received.Load())
		heartbeats += int64(s.heartbeats.Load())
		if s.closed.Load() {
			closed++
		} else {
			open++
		}
	})
	return map[string]any{"received": received, "open": open, "closed": closed, "heartbeats": heartbeats}
}

func (c *client) report() map[string]any {
	answer := c.progress()
	var duplicates, outOfOrder int64
	perStream := map[string]int{}  // received count -> streams that got that many
	heartbeats := map[string]int{} // heartbeats -> streams that got that many
	c.each(func(s *stream) {
		duplicates += int64(s.duplicates.Load())
		outOfOrder += int64(s.outOfOrder.Load())
		perStream[strconv.Itoa(int(s.received.Load()))]++
		heartbeats[strconv.Itoa(int(s.heartbeats.Load()))]++
	})
	latency := map[string]uint32{}
	for ms := range c.latency {
		if n := c.latency[ms].Load(); n > 0 {
			latency[strconv.Itoa(ms)] = n
		}
	}
	c.mu.Lock()
	errs := make(map[string]int, len(c.errCounts))
	for k, v := range c.errCounts {
		errs[k] = v
	}
	c.mu.Unlock()
	answer["duplicates"] = duplicates
	answer["out_of_order"] = outOfOrder
	answer["received_per_stream"] = perStream
	answer["heartbeats_per_stream"] = heartbeats
	answer["latency_ms"] = latency
	answer["errors"] = errs
	return answer
}
