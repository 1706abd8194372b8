package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version says which build this is: the module's version ("(devel)" when
// built from a checkout without one), the commit it was built from, if
// known, and the Go release.
func version() string {
	v, rev := "(devel)", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		var modified bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" && modified {
			rev += "+modified"
		}
	}
	s := fmt.Sprintf("%s %s", progName, v)
	if rev != "" {
		s += " commit " + rev
	}
	return s + " " + runtime.Version()
}
