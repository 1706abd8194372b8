package reversehttp

import (
	"slices"
	"testing"
)

func TestList(t *testing.T) {
	type item struct {
		id int
		n  node[*item]
	}
	items := make([]*item, 5)
	for i := range items {
		items[i] = &item{id: i}
		items[i].n.val = items[i]
	}
	var l list[*item]
	ids := func() []int {
		var out []int
		l.each(func(it *item) bool { out = append(out, it.id); return true })
		return out
	}
	for _, it := range items[1:4] {
		l.pushBack(&it.n)
	}
	l.pushFront(&items[0].n)
	l.pushBack(&items[4].n)
	if got := ids(); !slices.Equal(got, []int{0, 1, 2, 3, 4}) || l.len() != 5 {
		t.Fatalf("after pushes: %v (len %d)", got, l.len())
	}
	l.remove(&items[2].n)
	l.remove(&items[4].n)
	if items[2].n.in || items[4].n.in {
		t.Fatal("removed nodes still say they are on the list")
	}
	if got := ids(); !slices.Equal(got, []int{0, 1, 3}) {
		t.Fatalf("after removes: %v", got)
	}
	if it, _ := l.front(); it.id != 0 {
		t.Fatalf("front is %d", it.id)
	}
	for _, want := range []int{0, 1, 3} {
		it, ok := l.popFront()
		if !ok || it.id != want {
			t.Fatalf("popFront = %v, %v; want %d", it, ok, want)
		}
	}
	if _, ok := l.popFront(); ok || l.len() != 0 || l.head != nil || l.tail != nil {
		t.Fatalf("list not empty: len %d", l.len())
	}
}
