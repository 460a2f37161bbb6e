package driver

// New returns a driver session whose WRITE and CLOSE go to target, for a
// kind that upgrades and attaches it itself (a watcher, with an output of
// its own): the kind sets Conn and Upstream, passes the driver (or a role
// wrapping it) to Upgrade and attaches the upstream. target must not be nil
// if the driver's Message is ever called.
func New(target Target, module string) *Driver {
	return &Driver{target: target, Module: module}
}
