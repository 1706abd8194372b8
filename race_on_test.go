//go:build race

package reversehttp

// raceDetector says that the tests run under -race, which makes some of
// them much slower.
const raceDetector = true
