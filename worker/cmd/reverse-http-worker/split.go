package main

import (
	"errors"
	"fmt"
	"strings"
)

// splitCommand splits --exec's COMMAND ARGS into words as a POSIX shell
// would for quoting: blanks separate words; 'single quotes' keep every
// character; "double quotes" keep every character but \, which escapes
// only \ " $ ` and a newline there; outside quotes \ escapes any character,
// and \ before a newline joins two lines. No shell runs the command, so
// whatever a shell would do beyond splitting and unquoting (pipes,
// redirections, variables, command substitution, comments, a second
// command after a newline) is an error
// rather than a surprise: such a command belongs in sh -c '...'. Globs
// and a leading ~ are not expanded, as in a shell that finds no match.
func splitCommand(s string) ([]string, error) {
	var (
		words  []string
		word   strings.Builder
		inWord bool // a word has started, perhaps with an empty quote
	)
	end := func() {
		if inWord {
			words = append(words, word.String())
			word.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			end()
		case c == '\n':
			return nil, errors.New("a newline would end the command in a shell; put \\ before it to continue the line")
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			word.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 1
		case c == '"':
			n, err := doubleQuoted(s[i+1:], &word)
			if err != nil {
				return nil, err
			}
			inWord = true
			i += n + 1
		case c == '\\':
			if i+1 == len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			if s[i] != '\n' {
				word.WriteByte(s[i])
				inWord = true
			}
		case c == '#' && !inWord:
			return nil, errors.New("# would start a comment in a shell; quote it")
		case strings.IndexByte("|&;<>()$`", c) >= 0:
			return nil, fmt.Errorf("%q is shell syntax, and no shell runs the command; quote it, or use sh -c '...'", c)
		default:
			word.WriteByte(c)
			inWord = true
		}
	}
	end()
	if len(words) == 0 {
		return nil, errors.New("no command")
	}
	return words, nil
}

// doubleQuoted unquotes s up to its closing double quote into word, and
// returns the index of that quote in s.
func doubleQuoted(s string, word *strings.Builder) (int, error) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return i, nil
		case '\\':
			if i+1 < len(s) && strings.IndexByte("\\\"$`\n", s[i+1]) >= 0 {
				i++
				if s[i] != '\n' {
					word.WriteByte(s[i])
				}
				continue
			}
			word.WriteByte(c)
		case '$', '`':
			return 0, fmt.Errorf("%q inside double quotes would expand in a shell, and no shell runs the command; use single quotes or \\%c", c, c)
		default:
			word.WriteByte(c)
		}
	}
	return 0, errors.New("unterminated double quote")
}
