// Package util holds the few helpers every service needs: deadlines around
// blocking calls and bounded command execution.
package util
