# %post of the portcullis rpm ($1: 1 on install, 2 or more on upgrade). The same steps
# as the .deb's postinst: enabled and started in audit mode on install; on upgrade
# restarted once the new files are in place, so the new agent takes the pinned
# programs over without a gap (the old one was never stopped).
# On the first install only, before the unit starts: choose the product from what runs
# on the host (as the .deb's postinst does); the shipped default stays otherwise.
if [ "$1" -eq 1 ] && [ -x /usr/bin/portcullis ]; then
	portcullis detect --write-config /etc/portcullis/portcullis.toml ||
		echo "portcullis: product detection failed; set product in /etc/portcullis/portcullis.toml" >&2
fi
if command -v systemctl >/dev/null 2>&1; then
	# Enabling works offline too (an image being built, `rpm --root`); starting needs
	# a running systemd.
	if [ "$1" -eq 1 ]; then
		systemctl enable portcullis.service >/dev/null 2>&1 || :
	fi
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || :
		if [ "$1" -eq 1 ]; then
			systemctl start portcullis.service || :
		else
			systemctl restart portcullis.service || :
		fi
	fi
fi
