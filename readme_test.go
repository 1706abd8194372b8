package reversehttp

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// readmeBlock returns the first fenced block of lang after heading in the
// README.
func readmeBlock(t *testing.T, readme, heading, lang string) string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no heading %q", heading)
	}
	rest := readme[i:]
	fence := "\n```" + lang + "\n"
	j := strings.Index(rest, fence)
	if j < 0 {
		t.Fatalf("README has no %s block after %q", lang, heading)
	}
	rest = rest[j+len(fence):]
	end := strings.Index(rest, "\n```")
	if end < 0 {
		t.Fatalf("README's %s block after %q does not end", lang, heading)
	}
	return rest[:end+1]
}

// TestReadmeJSON adapts the README's Caddyfile and compares the JSON with
// the README's JSON block, which says it is what `caddy adapt --pretty`
// prints.
func TestReadmeJSON(t *testing.T) {
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	cf := readmeBlock(t, readme, "## Configuration", "caddyfile")
	want := readmeBlock(t, readme, "### JSON", "json")
	got, err := adapt(cf)
	if err != nil {
		t.Fatalf("adapting the README's Caddyfile: %v\n%s", err, cf)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, got, "", "\t"); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(pretty.String()) != strings.TrimSpace(want) {
		t.Errorf("the README's JSON is not what its Caddyfile adapts to; it adapts to:\n%s", pretty.String())
	}
}
