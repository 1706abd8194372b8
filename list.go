package reversehttp

// list is an intrusive doubly linked FIFO: its elements embed a node, so
// that queueing and dequeueing allocate nothing. The pool's lock guards
// every list it holds.
type list[T any] struct {
	head, tail *node[T]
	n          int
}

// node is a list element; val points back to what embeds it.
type node[T any] struct {
	prev, next *node[T]
	val        T
	in         bool // on a list
}

func (l *list[T]) len() int { return l.n }

func (l *list[T]) pushBack(e *node[T]) {
	e.prev, e.next, e.in = l.tail, nil, true
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
	l.n++
}

func (l *list[T]) pushFront(e *node[T]) {
	e.prev, e.next, e.in = nil, l.head, true
	if l.head != nil {
		l.head.prev = e
	} else {
		l.tail = e
	}
	l.head = e
	l.n++
}

// front returns the oldest element without removing it.
func (l *list[T]) front() (T, bool) {
	if l.head == nil {
		var zero T
		return zero, false
	}
	return l.head.val, true
}

// popFront removes and returns the oldest element.
func (l *list[T]) popFront() (T, bool) {
	e := l.head
	if e == nil {
		var zero T
		return zero, false
	}
	l.remove(e)
	return e.val, true
}

// remove takes e off the list; e must be on it.
func (l *list[T]) remove(e *node[T]) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next, e.in = nil, nil, false
	l.n--
}

// each calls f on every element, oldest first, until f returns false. f
// must not change the list.
func (l *list[T]) each(f func(T) bool) {
	for e := l.head; e != nil; e = e.next {
		if !f(e.val) {
			return
		}
	}
}
