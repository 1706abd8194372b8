package reversehttp

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/adapt")

const separator = "\n----------\n"

func adapt(caddyfile string) ([]byte, error) {
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	return out, err
}

// TestAdapt adapts each Caddyfile in testdata/adapt and compares the JSON
// with the expected one below its separator.
func TestAdapt(t *testing.T) {
	files, _ := filepath.Glob("testdata/adapt/*.caddyfiletest")
	if len(files) == 0 {
		t.Fatal("no adapt cases found")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, _ := strings.Cut(string(raw), separator)
			got, err := adapt(input)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, got, "", "\t"); err != nil {
				t.Fatal(err)
			}
			if *update {
				if err := os.WriteFile(file, []byte(input+separator+pretty.String()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if strings.TrimSpace(want) != strings.TrimSpace(pretty.String()) {
				t.Errorf("adapted JSON differs\n--- got\n%s\n--- want\n%s", pretty.String(), want)
			}
		})
	}
}

// TestAdaptErrors checks that each Caddyfile in testdata/errors fails to
// adapt with the error below its separator, which names the line.
func TestAdaptErrors(t *testing.T) {
	files, _ := filepath.Glob("testdata/errors/*.caddyfiletest")
	if len(files) == 0 {
		t.Fatal("no error cases found")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), separator)
			if !ok {
				t.Fatal("no expected error after the separator")
			}
			_, err = adapt(input)
			if err == nil {
				t.Fatalf("adapted without error; want %q", strings.TrimSpace(want))
			}
			if !strings.Contains(err.Error(), strings.TrimSpace(want)) {
				t.Errorf("error %q\ndoes not contain %q", err, strings.TrimSpace(want))
			}
		})
	}
}
