package reversehttp

import (
	"bytes"
	linked "container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// CacheConfig keeps the cacheable results of a route's jobs in Caddy's
// storage, so that a request for a result that is there never reaches
// the queue.
type CacheConfig struct {
	// How long a result stays fresh, unless the worker's Cache-Control
	// says otherwise (s-maxage, else max-age). Required.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// Placeholders whose values, with the request's method, make the key
	// of a result. Default: `{http.request.host} {http.request.uri}`. A
	// response that varies (Vary) with a request header is stored only if
	// that header is in the key.
	Key []string `json:"key,omitempty"`

	// The largest result stored, its header included; larger ones are
	// sent to the consumer but not kept. Default: 10MiB.
	MaxEntrySize int64 `json:"max_entry_size,omitempty"`

	// The most the route's results may take in the storage; the oldest
	// go first when a new one would exceed it. Default: 1GiB.
	MaxTotalSize int64 `json:"max_total_size,omitempty"`

	// The storage module to keep results in (namespace caddy.storage),
	// for instance one that several hubs share. Default: Caddy's storage
	// (the global storage option, else the file system).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
}

const (
	defaultMaxEntrySize = 10 << 20
	defaultMaxTotalSize = 1 << 30
	// cacheRescan is how often the cache lists the storage again, to
	// account for the results that other hubs sharing it store.
	cacheRescan = time.Minute
	// cacheStorageTimeout bounds one storage operation.
	cacheStorageTimeout = 10 * time.Second
)

// Cache results, for the cache_total metric: what a lookup found, and
// what became of a miss's response.
const (
	cacheHit = iota
	cacheMiss
	cacheBypass // the request may not be answered from the cache
	cacheStored
	cacheUncacheable // the response may not be stored
	cacheTooLarge
	numCacheResults
)

var cacheResultNames = [numCacheResults]string{"hit", "miss", "bypass", "stored", "uncacheable", "too_large"}

// cacheableStatus are the statuses whose responses are stored: those RFC
// 9110 makes heuristically cacheable.
var cacheableStatus = map[int]bool{200: true, 203: true, 204: true, 300: true, 301: true, 308: true,
	404: true, 405: true, 410: true, 414: true, 501: true}

// resultCache is a route's cache.
type resultCache struct {
	ttl      time.Duration
	key      []string
	inKey    map[string]bool // request headers the key includes
	maxEntry int64
	maxTotal int64
	storage  certmagic.Storage
	prefix   string
	pool     *Pool
	logger   *zap.Logger
	stop     context.CancelFunc

	// The most bytes of entries that the pool's hits may hold at once
	// (cacheHitBudget; the pool counts them, across reloads): a hit holds
	// its whole entry until its consumer has read it, and slow consumers
	// of large entries must not hold memory without bound.
	hitBudget int64

	// The entries the cache knows of, oldest first, and their total size.
	// They are this hub's stores since its last scan of the storage and
	// what that scan found.
	mu    sync.Mutex
	order *linked.List // of *cacheIndexEntry
	index map[string]*linked.Element
	total int64
}

type cacheIndexEntry struct {
	key  string
	size int64
	at   time.Time
}

func newResultCache(ctx caddy.Context, c *CacheConfig, pool *Pool, logger *zap.Logger) (*resultCache, error) {
	if c.TTL <= 0 {
		return nil, errors.New("cache: ttl must be positive")
	}
	storage := ctx.Storage()
	if c.StorageRaw != nil {
		mod, err := ctx.LoadModule(c, "StorageRaw")
		if err != nil {
			return nil, fmt.Errorf("cache: loading the storage module: %v", err)
		}
		if storage, err = mod.(caddy.StorageConverter).CertMagicStorage(); err != nil {
			return nil, fmt.Errorf("cache: setting up the storage: %v", err)
		}
	}
	rc := &resultCache{
		hitBudget: cacheHitBudget,
		ttl:       time.Duration(c.TTL), key: c.Key, maxEntry: c.MaxEntrySize, maxTotal: c.MaxTotalSize,
		storage: storage, prefix: "reverse_http/cache/" + pool.name + "/", pool: pool, logger: logger,
		order: linked.New(), index: map[string]*linked.Element{},
	}
	if len(rc.key) == 0 {
		rc.key = defaultShareKey
	}
	if rc.maxEntry == 0 {
		rc.maxEntry = defaultMaxEntrySize
	}
	if rc.maxTotal == 0 {
		rc.maxTotal = defaultMaxTotalSize
	}
	if rc.maxEntry < 0 || rc.maxTotal < 0 {
		return nil, errors.New("cache: sizes must be positive")
	}
	rc.inKey = keyHeaders(rc.key)
	scanCtx, stop := context.WithCancel(context.Background())
	rc.stop = stop
	go rc.scanLoop(scanCtx)
	return rc, nil
}

// applies reports whether r may be answered from the cache and its
// response stored. A request with credentials (Authorization, Cookie) that
// the key does not include may not, as a shared cache must not give one
// consumer's answer to another.
func (rc *resultCache) applies(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && !hasContent(r) &&
		r.Header.Get("Upgrade") == "" && !privateRequest(r, rc.inKey)
}

// storageKey is where the result for r is kept.
func (rc *resultCache) storageKey(r *http.Request) (key, full string) {
	full = requestKey(r, rc.key)
	sum := sha256.Sum256([]byte(full))
	return rc.prefix + hex.EncodeToString(sum[:]), full
}

// cacheMeta heads an entry in the storage; the body follows it.
type cacheMeta struct {
	Key     string      `json:"key"`
	Status  int         `json:"status"`
	Header  http.Header `json:"header"`
	Stored  time.Time   `json:"stored"`
	Expires time.Time   `json:"expires"`
	Body    int64       `json:"body"`
}

const cacheMagic = "reverse_http cache 1\n"

func encodeEntry(m *cacheMeta, body []byte) []byte {
	meta, _ := json.Marshal(m)
	out := make([]byte, 0, len(cacheMagic)+len(meta)+1+len(body))
	out = append(out, cacheMagic...)
	out = append(out, meta...)
	out = append(out, '\n')
	return append(out, body...)
}

func decodeEntry(data []byte) (*cacheMeta, []byte, error) {
	rest, ok := bytes.CutPrefix(data, []byte(cacheMagic))
	if !ok {
		return nil, nil, errors.New("not a cache entry")
	}
	meta, body, ok := bytes.Cut(rest, []byte{'\n'})
	if !ok {
		return nil, nil, errors.New("cache entry without a body")
	}
	m := new(cacheMeta)
	if err := json.Unmarshal(meta, m); err != nil {
		return nil, nil, err
	}
	if int64(len(body)) != m.Body {
		return nil, nil, fmt.Errorf("cache entry has %d bytes of body; its head says %d", len(body), m.Body)
	}
	return m, body, nil
}

// serveHit answers r from the cache if its result is there and fresh,
// and reports whether it did.
func (rc *resultCache) serveHit(w http.ResponseWriter, r *http.Request, key, full string) bool {
	ctx, cancel := context.WithTimeout(r.Context(), cacheStorageTimeout)
	defer cancel()
	// The entry's size, to reserve before it is loaded: an entry larger
	// than this cache stores (another hub's) is not loaded at all, and a
	// hit beyond the budget of bytes in flight is answered by a job.
	info, err := rc.storage.Stat(ctx, key)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			rc.logger.Warn("cache lookup failed", zap.String("key", key), zap.Error(err))
		}
		return false
	}
	if info.Size > rc.maxEntry || !rc.reserveHit(info.Size) {
		return false
	}
	held := info.Size
	defer func() { rc.pool.obs.shared.hitBytes.Add(-held) }()
	data, err := rc.storage.Load(ctx, key)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			rc.logger.Warn("cache lookup failed", zap.String("key", key), zap.Error(err))
		}
		return false
	}
	if n := int64(len(data)); n > held {
		// Replaced since the Stat.
		if n > rc.maxEntry || !rc.reserveHit(n-held) {
			return false
		}
		held = n
	}
	m, body, err := decodeEntry(data)
	now := time.Now()
	if err != nil || m.Key != full {
		if err != nil {
			rc.logger.Warn("cache entry unreadable", zap.String("key", key), zap.Error(err))
		}
		return false
	}
	if !now.Before(m.Expires) {
		// Deleted before the miss's job runs, so that it cannot delete
		// the result that job stores.
		rc.forget(key)
		rc.deleteWith(ctx, key)
		return false
	}
	// m is this hit's own: its values need no copy.
	h := w.Header()
	for k, vs := range m.Header {
		h[k] = vs
	}
	h.Set("Age", strconv.Itoa(int(now.Sub(m.Stored).Seconds())))
	w.Header().Set("Cache-Status", fmt.Sprintf("reverse_http; hit; ttl=%d", int(m.Expires.Sub(now).Seconds())))
	if r.Method != http.MethodHead {
		// A HEAD entry keeps the length its worker announced.
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	// Counted before the consumer can have the last byte, so that a
	// count read after a response includes it.
	rc.count(cacheHit)
	w.WriteHeader(m.Status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
	return true
}

// fill runs the job through a recorder that keeps its response if it may
// be stored, and stores it once the job has sent all of it.
func (rc *resultCache) fill(w http.ResponseWriter, r *http.Request, key, full string, run func(http.ResponseWriter, *http.Request) error) error {
	rec := &cacheRecorder{ResponseWriter: w, rc: rc}
	defer rc.pool.obs.shared.filled.Add(1)
	err := run(rec, r)
	if err != nil || !rec.keep {
		return err
	}
	now := time.Now()
	m := &cacheMeta{Key: full, Status: rec.status, Header: rec.header, Stored: now, Expires: now.Add(rec.ttl), Body: int64(len(rec.body))}
	rc.store(key, encodeEntry(m, rec.body))
	return nil
}

// cacheRecorder passes a job's response on to the consumer and keeps a
// copy while it may be stored and fits max_entry_size.
type cacheRecorder struct {
	http.ResponseWriter
	rc     *resultCache
	status int
	header http.Header
	ttl    time.Duration
	keep   bool
	size   int64
	body   []byte
}

func (cr *cacheRecorder) WriteHeader(status int) {
	if status >= 200 && cr.status == 0 {
		cr.status = status
		h := cr.Header()
		cr.ttl, cr.keep = cr.rc.storable(status, h)
		if cr.keep {
			cr.header = h.Clone()
			cr.header.Del("Cache-Status")
			cr.size = headerSize(cr.header)
			if cl, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && cr.size+cl > cr.rc.maxEntry {
				cr.tooLarge()
			}
		} else {
			cr.rc.count(cacheUncacheable)
		}
	}
	cr.ResponseWriter.WriteHeader(status)
}

func (cr *cacheRecorder) Write(p []byte) (int, error) {
	if cr.status == 0 {
		cr.WriteHeader(http.StatusOK)
	}
	if cr.keep {
		if cr.size+int64(len(cr.body)+len(p)) > cr.rc.maxEntry {
			cr.tooLarge()
		} else {
			cr.body = append(cr.body, p...)
		}
	}
	return cr.ResponseWriter.Write(p)
}

func (cr *cacheRecorder) tooLarge() {
	cr.keep, cr.body = false, nil
	cr.rc.count(cacheTooLarge)
}

// Unwrap gives http.ResponseController the consumer's writer, to flush.
func (cr *cacheRecorder) Unwrap() http.ResponseWriter { return cr.ResponseWriter }

// Flush is there for the proxy's flushes.
func (cr *cacheRecorder) Flush() { _ = http.NewResponseController(cr.ResponseWriter).Flush() }

func headerSize(h http.Header) int64 {
	n := int64(0)
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

// storable reports whether a response with status and header may be
// stored, and for how long it is fresh: RFC 9111's rules for a shared
// cache, less those that need revalidation (no-cache is not stored).
func (rc *resultCache) storable(status int, h http.Header) (time.Duration, bool) {
	if !cacheableStatus[status] || len(h.Values("Set-Cookie")) > 0 || len(h.Values("Trailer")) > 0 {
		// Trailers are not kept: a hit could not give them.
		return 0, false
	}
	for _, v := range h.Values("Vary") {
		for _, name := range strings.Split(v, ",") {
			name = strings.TrimSpace(name)
			if name == "*" || (name != "" && !rc.inKey[http.CanonicalHeaderKey(name)]) {
				return 0, false
			}
		}
	}
	ttl, maxAge, sMaxAge := rc.ttl, time.Duration(-1), time.Duration(-1)
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			name, arg, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(name) {
			case "no-store", "private", "no-cache":
				return 0, false
			case "max-age", "s-maxage":
				secs, err := strconv.ParseInt(strings.Trim(arg, `"`), 10, 64)
				if err != nil || secs < 0 {
					return 0, false // malformed: RFC 9111 says stale
				}
				age := time.Duration(min(secs, 1<<31)) * time.Second
				if strings.EqualFold(name, "s-maxage") {
					sMaxAge = age
				} else {
					maxAge = age
				}
			}
		}
	}
	switch {
	case sMaxAge >= 0:
		ttl = sMaxAge
	case maxAge >= 0:
		ttl = maxAge
	}
	return ttl, ttl > 0
}

// store writes an entry and makes room for it.
func (rc *resultCache) store(key string, data []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), cacheStorageTimeout)
	defer cancel()
	if err := rc.storage.Store(ctx, key, data); err != nil {
		rc.logger.Warn("cache store failed", zap.String("key", key), zap.Error(err))
		return
	}
	for _, old := range rc.account(key, int64(len(data)), time.Now()) {
		rc.deleteWith(ctx, old)
	}
	rc.count(cacheStored)
}

// account records an entry of size stored at at and returns the oldest
// entries to delete to stay within max_total_size (never the new one).
func (rc *resultCache) account(key string, size int64, at time.Time) []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if el, ok := rc.index[key]; ok {
		rc.total -= el.Value.(*cacheIndexEntry).size
		rc.order.Remove(el)
	}
	rc.index[key] = rc.order.PushBack(&cacheIndexEntry{key: key, size: size, at: at})
	rc.total += size
	return rc.evictLocked()
}

func (rc *resultCache) evictLocked() []string {
	var out []string
	for rc.total > rc.maxTotal && rc.order.Len() > 1 {
		e := rc.order.Remove(rc.order.Front()).(*cacheIndexEntry)
		delete(rc.index, e.key)
		rc.total -= e.size
		out = append(out, e.key)
	}
	return out
}

// forget removes key from the index.
func (rc *resultCache) forget(key string) {
	rc.mu.Lock()
	if el, ok := rc.index[key]; ok {
		rc.total -= el.Value.(*cacheIndexEntry).size
		rc.order.Remove(el)
		delete(rc.index, key)
	}
	rc.mu.Unlock()
}

func (rc *resultCache) deleteWith(ctx context.Context, key string) {
	if err := rc.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		rc.logger.Warn("cache delete failed", zap.String("key", key), zap.Error(err))
	}
}

// scanLoop lists the storage when the cache starts and every cacheRescan,
// so that the index counts what other hubs (and earlier configs) stored.
func (rc *resultCache) scanLoop(ctx context.Context) {
	t := time.NewTicker(cacheRescan)
	defer t.Stop()
	for {
		rc.scan(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scan rebuilds the index from the storage, oldest first, and deletes
// the oldest entries while they exceed max_total_size.
func (rc *resultCache) scan(ctx context.Context) {
	keys, err := rc.storage.List(ctx, strings.TrimSuffix(rc.prefix, "/"), true)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
			rc.logger.Warn("cache scan failed", zap.Error(err))
		}
		return
	}
	found := make([]*cacheIndexEntry, 0, len(keys))
	for _, k := range keys {
		info, err := rc.storage.Stat(ctx, k)
		if err != nil || !info.IsTerminal {
			continue
		}
		found = append(found, &cacheIndexEntry{key: k, size: info.Size, at: info.Modified})
	}
	slices.SortFunc(found, func(a, b *cacheIndexEntry) int { return a.at.Compare(b.at) })
	seen := make(map[string]struct{}, len(found))
	for _, f := range found {
		seen[f.key] = struct{}{}
	}
	rc.mu.Lock()
	// What this hub stored while the scan ran stays, as the newest.
	var newer []*cacheIndexEntry
	for el := rc.order.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*cacheIndexEntry); !contains(seen, e.key) {
			newer = append(newer, e)
		}
	}
	rc.order.Init()
	clear(rc.index)
	rc.total = 0
	for _, e := range append(found, newer...) {
		rc.index[e.key] = rc.order.PushBack(e)
		rc.total += e.size
	}
	evict := rc.evictLocked()
	rc.mu.Unlock()
	for _, k := range evict {
		rc.deleteWith(ctx, k)
	}
}

// cacheHitBudget is the most bytes of entries that a pool's caches hold at
// once for the hits they are answering; a hit beyond it is answered by a
// job.
var cacheHitBudget int64 = 256 << 20

// reserveHit takes n bytes of the hit budget, if they are there.
func (rc *resultCache) reserveHit(n int64) bool {
	if b := &rc.pool.obs.shared.hitBytes; b.Add(n) > rc.hitBudget {
		b.Add(-n)
		return false
	}
	return true
}

func contains(set map[string]struct{}, k string) bool {
	_, ok := set[k]
	return ok
}

func (rc *resultCache) count(result int) { rc.pool.obs.shared.cache[result].Add(1) }

// unmarshalCaddyfile reads the cache directive of the handler block:
// `cache <ttl> { key ...; max_entry_size <size>; max_total_size <size>;
// storage <module> ... }`.
func (c *CacheConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var s string
	if !d.AllArgs(&s) {
		return d.Err("cache needs one argument: the time a result stays fresh")
	}
	ttl, err := caddy.ParseDuration(s)
	if err != nil || ttl <= 0 {
		return d.Errf("cache ttl must be a positive duration, not %q", s)
	}
	c.TTL = caddy.Duration(ttl)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "key":
			key, err := parseKey(d)
			if err != nil {
				return err
			}
			c.Key = append(c.Key, key...)
		case "max_entry_size", "max_total_size":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			if opt == "max_entry_size" {
				c.MaxEntrySize = size
			} else {
				c.MaxTotalSize = size
			}
		case "storage":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "caddy.storage."+name)
			if err != nil {
				return d.Errf("cache storage: %v", err)
			}
			if _, ok := unm.(caddy.StorageConverter); !ok {
				return d.Errf("module caddy.storage.%s is not a storage", name)
			}
			c.StorageRaw = caddyconfig.JSONModuleObject(unm, "module", name, nil)
		default:
			return d.Errf("unrecognized cache option %q (want key, max_entry_size, max_total_size or storage)", opt)
		}
	}
	return nil
}
