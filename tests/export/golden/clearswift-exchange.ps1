# portcullis export for Windows Firewall: product clearswift-exchange, mode enforce,
# policy digest e2b4f34f786daf8c
# from built-in product clearswift-exchange --all-features, default site settings
# Run it as Administrator (PowerShell 5.1 or 7, NetSecurity module). It first removes
# every rule of its group, so running it again replaces what an earlier run created;
# other rules on the host are left alone and still apply (an allow rule of any group
# opens its port). See docs/export.md.
# Not expressed: per-rule counters (Windows Firewall counts nothing per rule: turn on its
# log with Set-NetFirewallProfile -LogAllowed/-LogBlocked); the agent's per-service scope
# (these rules cover every program); loopback, which Windows Firewall never filters.
#Requires -RunAsAdministrator
$ErrorActionPreference = 'Stop'
$Group = 'portcullis clearswift-exchange'

# What an earlier run of this script created.
Remove-NetFirewallRule -Group $Group -ErrorAction SilentlyContinue

# sxg-interceptors/in: communication with other SXG interceptors
# source: 001_20cbb4f238772456.txt table 2 row 2
# peers: group sxg-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/sxg-interceptors/in/tcp' -DisplayName 'portcullis sxg-interceptors/in (tcp)' -Description 'communication with other SXG interceptors (source: 001_20cbb4f238772456.txt table 2 row 2)' -Direction Inbound -Protocol TCP -LocalPort '23953' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# sxg-config-store/in: LDAP access to the SXG configuration store
# source: 001_20cbb4f238772456.txt table 2 row 3
# note: the configuration store lives on the SXG servers, hence the same peer group as
# the interceptors
# peers: group sxg-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/sxg-config-store/in/tcp' -DisplayName 'portcullis sxg-config-store/in (tcp)' -Description 'LDAP access to the SXG configuration store (source: 001_20cbb4f238772456.txt table 2 row 3)' -Direction Inbound -Protocol TCP -LocalPort '23955' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# failsafe-ssh: keep SSH reachable so that a wrong policy cannot lock the operator out
# source: site failsafe (set failsafe = false to remove)
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/failsafe-ssh/tcp' -DisplayName 'portcullis failsafe-ssh (tcp)' -Description 'keep SSH reachable so that a wrong policy cannot lock the operator out (source: site failsafe (set failsafe = false to remove))' -Direction Inbound -Protocol TCP -LocalPort '22' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# sxg-web-service: HTTPS access to the SECURE Exchange Gateway web service
# source: 001_20cbb4f238772456.txt table 2 row 1
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/sxg-web-service/tcp' -DisplayName 'portcullis sxg-web-service (tcp)' -Description 'HTTPS access to the SECURE Exchange Gateway web service (source: 001_20cbb4f238772456.txt table 2 row 1)' -Direction Outbound -Protocol TCP -RemotePort '10443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# sxg-interceptors/out: communication with other SXG interceptors
# source: 001_20cbb4f238772456.txt table 2 row 2
# peers: group sxg-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/sxg-interceptors/out/tcp' -DisplayName 'portcullis sxg-interceptors/out (tcp)' -Description 'communication with other SXG interceptors (source: 001_20cbb4f238772456.txt table 2 row 2)' -Direction Outbound -Protocol TCP -RemotePort '23953' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# sxg-config-store/out: LDAP access to the SXG configuration store
# source: 001_20cbb4f238772456.txt table 2 row 3
# note: the configuration store lives on the SXG servers, hence the same peer group as
# the interceptors
# peers: group sxg-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/sxg-config-store/out/tcp' -DisplayName 'portcullis sxg-config-store/out (tcp)' -Description 'LDAP access to the SXG configuration store (source: 001_20cbb4f238772456.txt table 2 row 3)' -Direction Outbound -Protocol TCP -RemotePort '23955' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# icmp_echo = true: echo requests pass both ways.
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/icmp-echo/ICMPv4/in' -DisplayName 'portcullis icmp-echo (ICMPv4 in)' -Direction Inbound -Protocol ICMPv4 -IcmpType 8 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/icmp-echo/ICMPv6/in' -DisplayName 'portcullis icmp-echo (ICMPv6 in)' -Direction Inbound -Protocol ICMPv6 -IcmpType 128 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/icmp-echo/ICMPv4/out' -DisplayName 'portcullis icmp-echo (ICMPv4 out)' -Direction Outbound -Protocol ICMPv4 -IcmpType 8 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/clearswift-exchange/icmp-echo/ICMPv6/out' -DisplayName 'portcullis icmp-echo (ICMPv6 out)' -Direction Outbound -Protocol ICMPv6 -IcmpType 128 -Action Allow -Profile Any | Out-Null

# enforce: what no allow rule opens is blocked, both ways. The failsafe rule keeps the
# port the site names (failsafe_port, 22 by default; RDP is 3389).
Set-NetFirewallProfile -Profile Domain,Private,Public -Enabled True -DefaultInboundAction Block -DefaultOutboundAction Block
