package store_test

import (
	"testing"

	"github.com/herdlab/herd/image/store"
	"github.com/herdlab/herd/testlab"
)

// TestBuiltImagesIntact rehashes the real images of the shared test store
// (read only: nothing is changed). It builds the small test recipe itself
// (a stage-cache hit when image/build's tests already did), so it never
// depends on the order packages are tested in.
func TestBuiltImagesIntact(t *testing.T) {
	dir := testlab.MinimalImage(t)
	s := store.ReadOnly(testlab.TestStore)
	imgs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, im := range imgs {
		found = found || im.Dir == dir
		if err := s.Verify(im.ID); err != nil {
			t.Error(err)
		}
		for _, a := range store.Artifacts {
			if _, ok := im.Manifest.Artifacts[a]; !ok {
				t.Errorf("%s: manifest lacks %s", im.ID, a)
			}
		}
	}
	if !found {
		t.Fatalf("the image just built (%s) is not listed", dir)
	}
	t.Logf("%d built images verified in %s", len(imgs), testlab.TestStore)
}
