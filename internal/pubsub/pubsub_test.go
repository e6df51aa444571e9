package pubsub

import (
	"errors"
	"testing"
)

func TestLimitsAndRelease(t *testing.T) {
	b := New[int](3, 2, 4)
	a1, err := b.Subscribe("10.0.0.9")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Subscribe("10.0.0.9"); err != nil {
		t.Fatal(err)
	}
	// The third from the same source is refused; another source still fits.
	if _, err := b.Subscribe("10.0.0.9"); !errors.Is(err, ErrFull) {
		t.Fatalf("third subscriber from one source: err %v, want ErrFull", err)
	}
	other, err := b.Subscribe("10.0.0.7")
	if err != nil {
		t.Fatalf("a second source was refused: %v", err)
	}
	if _, err := b.Subscribe("10.0.0.8"); !errors.Is(err, ErrFull) {
		t.Fatalf("subscriber over the total: err %v, want ErrFull", err)
	}
	a1.Close()
	a1.Close()
	if _, err := b.Subscribe("10.0.0.8"); err != nil {
		t.Fatalf("a closed subscription did not free its place: %v", err)
	}
	if _, ok := <-a1.C; ok {
		t.Fatal("C of a closed subscription is still open")
	}
	other.Close()
	if b.Len() != 2 {
		t.Fatalf("Len %d, want 2", b.Len())
	}
}

// A subscriber that never reads must not block the publisher: it loses the
// overflow and is told how much.
func TestSlowSubscriberNeverBlocksPublish(t *testing.T) {
	b := New[int](10, 10, 4)
	slow, _ := b.Subscribe("a")
	fast, _ := b.Subscribe("b")
	got := 0
	for i := 0; i < 1000; i++ {
		b.Publish(i) // returns although slow's buffer filled after 4
		select {
		case <-fast.C:
			got++
		default:
		}
	}
	if got != 1000 {
		t.Errorf("the reading subscriber got %d of 1000", got)
	}
	if lost := slow.Lost(); lost != 996 {
		t.Errorf("slow subscriber lost %d, want 996", lost)
	}
	if lost := slow.Lost(); lost != 0 {
		t.Errorf("Lost did not reset: %d", lost)
	}
	if len(slow.C) != 4 || <-slow.C != 0 {
		t.Errorf("slow subscriber's buffer should hold the first 4 messages")
	}
}
