// Package util holds the few helpers every service needs: deadlines around
// blocking calls, bounded command execution and per-key operation locks.
package util
