// Package nodefs is the node's filesystem side that both drivers share:
// checks of the paths the CO names, the stage record kept beside a staging
// path and written atomically, the index of the volumes staged on the node,
// publishing (bind mounts, read-only honoured) and unpublishing, volume
// statistics and health, and the checks and locks around the node calls. What lies under a staging path (an RBD mapping, a CephFS
// mount) is each driver's own.
package nodefs
