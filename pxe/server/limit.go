package server

import (
	"io"
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxConnsPerIP bounds the open HTTP connections from one address (boot
// port and dashboard). A node needs one or two, a browser about six; a
// slowloris from one host gets this many and no more, so it cannot use up
// the server's descriptors. Connections over the cap are closed at once.
const MaxConnsPerIP = 32

// perIPListener closes connections from an address that already holds max.
type perIPListener struct {
	net.Listener
	max     int
	refused prometheus.Counter
	mu      sync.Mutex
	open    map[string]int
}

func newPerIPListener(ln net.Listener, max int, refused prometheus.Counter) *perIPListener {
	return &perIPListener{Listener: ln, max: max, refused: refused, open: map[string]int{}}
}

// Accept returns the next connection from an address under its cap.
func (l *perIPListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := c.RemoteAddr().String()
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			ip = a.IP.String()
		}
		l.mu.Lock()
		if l.open[ip] >= l.max {
			l.mu.Unlock()
			c.Close()
			if l.refused != nil {
				l.refused.Inc()
			}
			continue
		}
		l.open[ip]++
		l.mu.Unlock()
		return &countedConn{Conn: c, done: sync.OnceFunc(func() {
			l.mu.Lock()
			if l.open[ip]--; l.open[ip] <= 0 {
				delete(l.open, ip)
			}
			l.mu.Unlock()
		})}, nil
	}
}

// countedConn gives its slot back once, on Close.
type countedConn struct {
	net.Conn
	done func()
}

func (c *countedConn) Close() error {
	c.done()
	return c.Conn.Close()
}

// ReadFrom keeps sendfile(2) for downloads (net/http looks for it on the conn).
func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}
