package main

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// werkzeugWorkerPy stands in for a POTHEAD worker on the HTTP stack the
// real one serves jobs with (see the script's docstring).
//
//go:embed werkzeugworker.py
var werkzeugWorkerPy []byte

// werkzeugPython is the Python that has Debian's python3-werkzeug.
const werkzeugPython = "/usr/bin/python3"

// startWerkzeug starts the werkzeug stand-in for a POTHEAD worker with
// slots connections to hub; an error says why it cannot run.
func (e *env) startWerkzeug(name, hub string, slots int) (*proc, error) {
	if out, err := exec.Command(werkzeugPython, "-c", "import werkzeug").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s has no werkzeug (%v: %s); install the Debian package python3-werkzeug", werkzeugPython, err, bytes.TrimSpace(out))
	}
	path := filepath.Join(e.dir, "werkzeugworker.py")
	if err := os.WriteFile(path, werkzeugWorkerPy, 0o644); err != nil {
		return nil, err
	}
	return e.start(name, true, werkzeugPython, path, "--hub", hub, "--slots", strconv.Itoa(slots))
}
