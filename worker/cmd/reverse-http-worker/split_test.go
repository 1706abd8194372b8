package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// splitCases are commands and the words a POSIX shell makes of them.
var splitCases = []struct {
	in   string
	want []string
}{
	{"ffmpeg -i pipe:0 -f mp3 pipe:1", []string{"ffmpeg", "-i", "pipe:0", "-f", "mp3", "pipe:1"}},
	{"  a \t b \\\n c  ", []string{"a", "b", "c"}},
	{`sh -c 'while read l; do echo "$l"; done'`, []string{"sh", "-c", `while read l; do echo "$l"; done`}},
	{`echo "a b" 'c d'`, []string{"echo", "a b", "c d"}},
	{`echo a'b'"c"d`, []string{"echo", "abcd"}},
	{`echo '' ""`, []string{"echo", "", ""}},
	{`echo "\"\\\$\` + "`" + `\n"`, []string{"echo", "\"\\$`\\n"}},
	{`echo a\ b \'x\' \$HOME \#`, []string{"echo", "a b", "'x'", "$HOME", "#"}},
	{"echo a\\\nb", []string{"echo", "ab"}},
	{"echo \"a\\\nb\"", []string{"echo", "ab"}},
	{`echo 'it''s' "don't"`, []string{"echo", "its", "don't"}},
	{`echo a#b *.wav ~/x -map 0:a?`, []string{"echo", "a#b", "*.wav", "~/x", "-map", "0:a?"}},
	{`/usr/bin/python3 -u /srv/job.py`, []string{"/usr/bin/python3", "-u", "/srv/job.py"}},
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range splitCases {
		got, err := splitCommand(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("splitCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// TestSplitCommandLikeShell checks the cases against /bin/sh itself: a
// function prints its arguments, without globbing, and with a HOME of "~"
// so that tilde expansion changes nothing.
func TestSplitCommandLikeShell(t *testing.T) {
	for _, tc := range splitCases {
		cmd := exec.Command("/bin/sh", "-c", `set -f; p() { for a; do printf '%s\0' "$a"; done; }; p `+tc.in)
		cmd.Env = []string{"HOME=~"}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("sh with %q: %v", tc.in, err)
		}
		got := strings.Split(string(out), "\x00")
		if got = got[:len(got)-1]; !slices.Equal(got, tc.want) {
			t.Errorf("sh makes %q of %q; the test wants %q", got, tc.in, tc.want)
		}
	}
}

func TestSplitCommandErrors(t *testing.T) {
	for in, msg := range map[string]string{
		"":                     "no command",
		"  \t":                 "no command",
		"echo 'abc":            "unterminated single quote",
		`echo "abc`:            "unterminated double quote",
		`echo abc\`:            "trailing backslash",
		"ffmpeg -i - | lame -": `'|' is shell syntax`,
		"cmd > out.mp3":        `'>' is shell syntax`,
		"cmd < in":             `'<' is shell syntax`,
		"a; b":                 `';' is shell syntax`,
		"a && b":               `'&' is shell syntax`,
		"sleep 1 &":            `'&' is shell syntax`,
		"echo $HOME":           `'$' is shell syntax`,
		"echo `date`":          "'`' is shell syntax",
		"echo (x)":             `'(' is shell syntax`,
		`echo "$HOME"`:         "inside double quotes would expand",
		"echo \"`date`\"":      "inside double quotes would expand",
		"cmd # a comment":      "comment",
		"#cmd":                 "comment",
	} {
		got, err := splitCommand(in)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("splitCommand(%q) = %q, %v; want an error with %q", in, got, err, msg)
		}
	}
}
