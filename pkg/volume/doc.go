// Package volume is what the CSI services of both drivers share above
// Ceph: the gRPC code of an error, the size a request asks for, paging,
// non-blocking locks on volumes and names, the clusters and pools calls
// with secrets opened, the way from a CSI name or ID to a journal record
// (package journal keeps the records), and the CSI side of the controller
// calls both drivers answer alike (Calls).
package volume
