// Package util holds the few helpers every service needs: deadlines around
// blocking calls, bounded command execution, and waiting for a condition.
package util
