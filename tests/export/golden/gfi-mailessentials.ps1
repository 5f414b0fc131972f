# portcullis export for Windows Firewall: product gfi-mailessentials, mode enforce,
# policy digest ac8cf9fd448b6781
# from built-in product gfi-mailessentials --all-features, default site settings
# Run it as Administrator (PowerShell 5.1 or 7, NetSecurity module). It first removes
# every rule of its group, so running it again replaces what an earlier run created;
# other rules on the host are left alone and still apply (an allow rule of any group
# opens its port). See docs/export.md.
# Not expressed: per-rule counters (Windows Firewall counts nothing per rule: turn on its
# log with Set-NetFirewallProfile -LogAllowed/-LogBlocked); the agent's per-service scope
# (these rules cover every program); loopback, which Windows Firewall never filters.
# NOT EXPRESSED: peer group gfi-ftp names ftp.gfisoftware.com. Host names in peer groups
# cannot be expressed: the agent learns their addresses from trusted DNS answers as they
# arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets only
# the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group gfi-update-servers names cdnpatches.gfi.com,
# cdnupdate.gfi.com, db11.spamcatcher.net,
# gfi-downloader-137146314.us-east-1.elb.amazonaws.com, meupdate.gfi.com,
# spamrazer.gfi.com, support.gfi.com, *.mailshell.net, *.rules.mailshell.net. Host names
# in peer groups cannot be expressed: the agent learns their addresses from trusted DNS
# answers as they arrive, a static ruleset cannot. Safe side: a rule limited to such a
# group lets only the group's networks through, so flows to the names are denied until
# you add their addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...).
# New-NetFirewallRule -RemoteAddress takes no host names; Windows Server 2022 (build
# 20348) and later have FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress
# -AutoResolve), resolved by Microsoft Defender: this script does not create them.
#Requires -RunAsAdministrator
$ErrorActionPreference = 'Stop'
$Group = 'portcullis gfi-mailessentials'

# What an earlier run of this script created.
Remove-NetFirewallRule -Group $Group -ErrorAction SilentlyContinue

# multi-server/in: communication between the master and slave servers of a Multi-Server
# network
# source: 002_ca3a8f308c687eb3.txt row 5
# peers: group mailessentials-servers, which this site lets be any peer (any_peer_groups,
# or vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/multi-server/in/tcp' -DisplayName 'portcullis multi-server/in (tcp)' -Description 'communication between the master and slave servers of a Multi-Server network (source: 002_ca3a8f308c687eb3.txt row 5) [feature multi-server]' -Direction Inbound -Protocol TCP -LocalPort '9095-9096' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# gfi-directory/in: communication between MailEssentials and GFI Directory
# source: 002_ca3a8f308c687eb3.txt row 7
# note: direction not stated, so both; the port can be changed from the Switchboard
# peers: group gfi-directory-servers, which this site lets be any peer (any_peer_groups,
# or vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/gfi-directory/in/tcp' -DisplayName 'portcullis gfi-directory/in (tcp)' -Description 'communication between MailEssentials and GFI Directory (source: 002_ca3a8f308c687eb3.txt row 7) [feature gfi-directory]' -Direction Inbound -Protocol TCP -LocalPort '61000' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# failsafe-ssh: keep SSH reachable so that a wrong policy cannot lock the operator out
# source: site failsafe (set failsafe = false to remove)
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/failsafe-ssh/tcp' -DisplayName 'portcullis failsafe-ssh (tcp)' -Description 'keep SSH reachable so that a wrong policy cannot lock the operator out (source: site failsafe (set failsafe = false to remove))' -Direction Inbound -Protocol TCP -LocalPort '22' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# remoting/in: inter-process communication between MailEssentials processes
# source: 002_ca3a8f308c687eb3.txt row 4
# note: all MailEssentials processes run on the same server, so no firewall opening is
# needed beyond loopback; the ports can be changed (Configuring Remoting Ports)
# peers: group loopback
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/remoting/in/tcp' -DisplayName 'portcullis remoting/in (tcp)' -Description 'inter-process communication between MailEssentials processes (source: 002_ca3a8f308c687eb3.txt row 4)' -Direction Inbound -Protocol TCP -LocalPort '8015','9090-9091' -RemoteAddress '127.0.0.0/8','::1/128' -Action Allow -Profile Any -Enabled True | Out-Null

# dns: DNS for the SPF, IP DNS Blocklist, SpamRazer and URI DNS Blocklist filters
# source: 002_ca3a8f308c687eb3.txt row 1
# note: the protocol is not stated; DNS uses UDP, and TCP for large answers
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/dns/tcp' -DisplayName 'portcullis dns (tcp)' -Description 'DNS for the SPF, IP DNS Blocklist, SpamRazer and URI DNS Blocklist filters (source: 002_ca3a8f308c687eb3.txt row 1)' -Direction Outbound -Protocol TCP -RemotePort '53' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/dns/udp' -DisplayName 'portcullis dns (udp)' -Description 'DNS for the SPF, IP DNS Blocklist, SpamRazer and URI DNS Blocklist filters (source: 002_ca3a8f308c687eb3.txt row 1)' -Direction Outbound -Protocol UDP -RemotePort '53' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# multi-server/out: communication between the master and slave servers of a Multi-Server
# network
# source: 002_ca3a8f308c687eb3.txt row 5
# peers: group mailessentials-servers, which this site lets be any peer (any_peer_groups,
# or vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/multi-server/out/tcp' -DisplayName 'portcullis multi-server/out (tcp)' -Description 'communication between the master and slave servers of a Multi-Server network (source: 002_ca3a8f308c687eb3.txt row 5) [feature multi-server]' -Direction Outbound -Protocol TCP -RemotePort '9095-9096' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ldap: user lists from a remote Active Directory, GFI Directory, Domino or SMTP server
# (LDAP/LDAPS)
# source: 002_ca3a8f308c687eb3.txt row 6
# note: direction not stated; outbound because MailEssentials retrieves the user list
# peers: group ldap-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/ldap/tcp' -DisplayName 'portcullis ldap (tcp)' -Description 'user lists from a remote Active Directory, GFI Directory, Domino or SMTP server (LDAP/LDAPS) (source: 002_ca3a8f308c687eb3.txt row 6) [feature ldap]' -Direction Outbound -Protocol TCP -RemotePort '389','636' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# gfi-directory/out: communication between MailEssentials and GFI Directory
# source: 002_ca3a8f308c687eb3.txt row 7
# note: direction not stated, so both; the port can be changed from the Switchboard
# peers: group gfi-directory-servers, which this site lets be any peer (any_peer_groups,
# or vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/gfi-directory/out/tcp' -DisplayName 'portcullis gfi-directory/out (tcp)' -Description 'communication between MailEssentials and GFI Directory (source: 002_ca3a8f308c687eb3.txt row 7) [feature gfi-directory]' -Direction Outbound -Protocol TCP -RemotePort '61000' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ftp-updates: version information from ftp.gfisoftware.com
# source: 002_ca3a8f308c687eb3.txt row 2
# note: passive FTP also uses "a random port lower than 1024" for data, which is not
# opened here (it would open every outbound port below 1024); active-mode data
# connections come from port 20 to an ephemeral local port, which a port rule cannot
# express
# peers: group gfi-ftp
# DISABLED: peer group gfi-ftp has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/ftp-updates/tcp' -DisplayName 'portcullis ftp-updates (tcp)' -Description 'version information from ftp.gfisoftware.com (source: 002_ca3a8f308c687eb3.txt row 2) DISABLED: peer group gfi-ftp has only host names' -Direction Outbound -Protocol TCP -RemotePort '20-21' -Action Allow -Profile Any -Enabled False | Out-Null

# http-updates: product patches and updates (SpamRazer, anti-phishing, Bayesian,
# antivirus, scanners)
# source: 002_ca3a8f308c687eb3.txt row 3
# note: updates can also go through a proxy: then list the proxy under [peers]
# gfi-update-servers = [..]; *.rules.mailshell.net is inside *.mailshell.net
# peers: group gfi-update-servers
# DISABLED: peer group gfi-update-servers has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/http-updates/tcp' -DisplayName 'portcullis http-updates (tcp)' -Description 'product patches and updates (SpamRazer, anti-phishing, Bayesian, antivirus, scanners) (source: 002_ca3a8f308c687eb3.txt row 3) DISABLED: peer group gfi-update-servers has only host names' -Direction Outbound -Protocol TCP -RemotePort '80','443' -Action Allow -Profile Any -Enabled False | Out-Null

# remoting/out: inter-process communication between MailEssentials processes
# source: 002_ca3a8f308c687eb3.txt row 4
# note: all MailEssentials processes run on the same server, so no firewall opening is
# needed beyond loopback; the ports can be changed (Configuring Remoting Ports)
# peers: group loopback
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/remoting/out/tcp' -DisplayName 'portcullis remoting/out (tcp)' -Description 'inter-process communication between MailEssentials processes (source: 002_ca3a8f308c687eb3.txt row 4)' -Direction Outbound -Protocol TCP -RemotePort '8015','9090-9091' -RemoteAddress '127.0.0.0/8','::1/128' -Action Allow -Profile Any -Enabled True | Out-Null

# icmp_echo = true: echo requests pass both ways.
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/icmp-echo/ICMPv4/in' -DisplayName 'portcullis icmp-echo (ICMPv4 in)' -Direction Inbound -Protocol ICMPv4 -IcmpType 8 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/icmp-echo/ICMPv6/in' -DisplayName 'portcullis icmp-echo (ICMPv6 in)' -Direction Inbound -Protocol ICMPv6 -IcmpType 128 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/icmp-echo/ICMPv4/out' -DisplayName 'portcullis icmp-echo (ICMPv4 out)' -Direction Outbound -Protocol ICMPv4 -IcmpType 8 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/gfi-mailessentials/icmp-echo/ICMPv6/out' -DisplayName 'portcullis icmp-echo (ICMPv6 out)' -Direction Outbound -Protocol ICMPv6 -IcmpType 128 -Action Allow -Profile Any | Out-Null

# enforce: what no allow rule opens is blocked, both ways. The failsafe rule keeps the
# port the site names (failsafe_port, 22 by default; RDP is 3389).
Set-NetFirewallProfile -Profile Domain,Private,Public -Enabled True -DefaultInboundAction Block -DefaultOutboundAction Block
