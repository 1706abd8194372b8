package worker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// maxGateBody bounds what is read of a gate URL's answer, so that its
// connection can be reused.
const maxGateBody = 4096

// NewURLGate returns a gate that asks an application, with a GET to
// rawURL, whether it can take one more job: 200 OK means yes; any other
// status, or no answer within the gate's context (see [Config.Gate]),
// means no. It is the analogue of POTHEAD's wait_for_slot. A nil client
// means one of its own.
func NewURLGate(rawURL string, client *http.Client) (func(ctx context.Context) error, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("worker: gate URL %q: want an http:// or https:// URL", rawURL)
	}
	if client == nil {
		client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	target := u.String()
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("gate %s: %w", target, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxGateBody))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("gate %s answered %s", target, resp.Status)
		}
		return nil
	}, nil
}
