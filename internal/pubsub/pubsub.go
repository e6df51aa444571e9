// Package pubsub is the server's in-process fan-out for live updates (boot
// progress to the dashboard's server-sent events). It is bounded on every
// side, because subscribers are remote browsers on a hostile LAN: at most
// Max subscribers in total and PerSource from one source address, each with
// a fixed buffer; a subscriber that does not keep up loses messages (and is
// told so) instead of slowing the publisher, which never blocks.
package pubsub

import (
	"errors"
	"sync"
)

// ErrFull is returned by Subscribe when the total or per-source limit is reached.
var ErrFull = errors.New("pubsub: too many subscribers")

// Broker fans messages out to subscribers; safe for concurrent use.
type Broker[T any] struct {
	max, perSource, buffer int

	mu       sync.Mutex
	subs     map[*Sub[T]]struct{}
	bySource map[string]int
}

// Sub is one subscription: read C until it is closed.
type Sub[T any] struct {
	// C delivers messages; it is closed by Close.
	C      <-chan T
	c      chan T
	source string
	b      *Broker[T]
	mu     sync.Mutex
	lost   uint64
	closed bool
}

// New makes a broker for at most max subscribers, perSource of them from
// one source, each buffering up to buffer messages.
func New[T any](max, perSource, buffer int) *Broker[T] {
	if buffer < 1 {
		buffer = 1
	}
	return &Broker[T]{max: max, perSource: perSource, buffer: buffer,
		subs: map[*Sub[T]]struct{}{}, bySource: map[string]int{}}
}

// Subscribe adds a subscriber from source (its remote address), or returns
// ErrFull when the broker or that source is at its limit.
func (b *Broker[T]) Subscribe(source string) (*Sub[T], error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.subs) >= b.max || b.bySource[source] >= b.perSource {
		return nil, ErrFull
	}
	c := make(chan T, b.buffer)
	s := &Sub[T]{C: c, c: c, source: source, b: b}
	b.subs[s] = struct{}{}
	b.bySource[source]++
	return s, nil
}

// Publish hands m to every subscriber without blocking: a subscriber whose
// buffer is full misses m (counted in its Lost).
func (b *Broker[T]) Publish(m T) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		select {
		case s.c <- m:
		default:
			s.mu.Lock()
			s.lost++
			s.mu.Unlock()
		}
	}
}

// Len is the number of subscribers.
func (b *Broker[T]) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// Lost returns how many messages this subscriber missed since the last
// call (and resets the count), so a reader can tell its client to reload.
func (s *Sub[T]) Lost() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.lost
	s.lost = 0
	return n
}

// Close removes the subscriber and closes C; calling it again does nothing.
func (s *Sub[T]) Close() {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	delete(b.subs, s)
	if b.bySource[s.source]--; b.bySource[s.source] <= 0 {
		delete(b.bySource, s.source)
	}
	close(s.c)
}
