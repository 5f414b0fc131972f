# %postun of the portcullis rpm ($1: 0 on erase, 1 or more on upgrade). On erase, also
# remove the agent's runtime state (the pins are gone already: %preun ran `portcullis
# detach`); rpm keeps an edited config as portcullis.toml.rpmsave.
if [ "$1" -eq 0 ]; then
	rm -rf /run/portcullis
	rmdir /etc/portcullis 2>/dev/null || :
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || :
	fi
fi
