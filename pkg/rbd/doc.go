// Package rbd implements the CSI Controller and Node services for RBD
// block volumes.
package rbd
