# %preun of the portcullis rpm ($1: 0 on erase, 1 or more on upgrade). The same steps
# as the .deb's prerm: on erase, stop and disable the unit, then remove the programs
# (`systemctl stop` leaves them enforcing on purpose: a firewall must not open because
# its agent stopped, but a removed package must leave nothing behind). On upgrade
# nothing is stopped: %post restarted the unit and the new agent took over.
if [ "$1" -eq 0 ]; then
	if command -v systemctl >/dev/null 2>&1; then
		if [ -d /run/systemd/system ]; then
			systemctl stop portcullis.service >/dev/null 2>&1 || :
		fi
		systemctl disable portcullis.service >/dev/null 2>&1 || :
	fi
	if [ -x /usr/bin/portcullis ]; then
		/usr/bin/portcullis detach || echo "portcullis: detach failed; run 'portcullis detach' by hand" >&2
	fi
fi
