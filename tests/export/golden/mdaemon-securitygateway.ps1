# portcullis export for Windows Firewall: product mdaemon-securitygateway, mode enforce,
# policy digest d8669b106df25d51
# from built-in product mdaemon-securitygateway --all-features, default site settings
# Run it as Administrator (PowerShell 5.1 or 7, NetSecurity module). It first removes
# every rule of its group, so running it again replaces what an earlier run created;
# other rules on the host are left alone and still apply (an allow rule of any group
# opens its port). See docs/export.md.
# Not expressed: per-rule counters (Windows Firewall counts nothing per rule: turn on its
# log with Set-NetFirewallProfile -LogAllowed/-LogBlocked); the agent's per-service scope
# (these rules cover every program); loopback, which Windows Firewall never filters.
# NOT EXPRESSED: peer group clamav-database names database.clamav.net. Host names in peer
# groups cannot be expressed: the agent learns their addresses from trusted DNS answers
# as they arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets
# only the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group ctmail-resolvers names resolver1-mdaemon.ctmail.com,
# resolver2-mdaemon.ctmail.com, resolver3-mdaemon.ctmail.com,
# resolver4-mdaemon.ctmail.com, resolver5-mdaemon.ctmail.com,
# resolver6-mdaemon.ctmail.com, resolver7-mdaemon.ctmail.com,
# resolver8-mdaemon.ctmail.com, resolver9-mdaemon.ctmail.com. Host names in peer groups
# cannot be expressed: the agent learns their addresses from trusted DNS answers as they
# arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets only
# the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group ikarus-updates names updates.ikarus.at. Host names in peer
# groups cannot be expressed: the agent learns their addresses from trusted DNS answers
# as they arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets
# only the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group letsencrypt-acme names acme-staging-v02.api.letsencrypt.org,
# acme-v02.api.letsencrypt.org. Host names in peer groups cannot be expressed: the agent
# learns their addresses from trusted DNS answers as they arrive, a static ruleset
# cannot. Safe side: a rule limited to such a group lets only the group's networks
# through, so flows to the names are denied until you add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule -RemoteAddress
# takes no host names; Windows Server 2022 (build 20348) and later have FQDN dynamic
# keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by Microsoft
# Defender: this script does not create them.
# NOT EXPRESSED: peer group mdaemon-files names files.mdaemon.com. Host names in peer
# groups cannot be expressed: the agent learns their addresses from trusted DNS answers
# as they arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets
# only the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group mdaemon-services names services.mdaemon.com. Host names in
# peer groups cannot be expressed: the agent learns their addresses from trusted DNS
# answers as they arrive, a static ruleset cannot. Safe side: a rule limited to such a
# group lets only the group's networks through, so flows to the names are denied until
# you add their addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...).
# New-NetFirewallRule -RemoteAddress takes no host names; Windows Server 2022 (build
# 20348) and later have FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress
# -AutoResolve), resolved by Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group mdaemon-stats names stats.mdaemon.com. Host names in peer
# groups cannot be expressed: the agent learns their addresses from trusted DNS answers
# as they arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets
# only the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group microsoft-login names login.microsoftonline.com. Host names
# in peer groups cannot be expressed: the agent learns their addresses from trusted DNS
# answers as they arrive, a static ruleset cannot. Safe side: a rule limited to such a
# group lets only the group's networks through, so flows to the names are denied until
# you add their addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...).
# New-NetFirewallRule -RemoteAddress takes no host names; Windows Server 2022 (build
# 20348) and later have FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress
# -AutoResolve), resolved by Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group public-suffix names publicsuffix.org. Host names in peer
# groups cannot be expressed: the agent learns their addresses from trusted DNS answers
# as they arrive, a static ruleset cannot. Safe side: a rule limited to such a group lets
# only the group's networks through, so flows to the names are denied until you add their
# addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule
# -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and later have
# FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress -AutoResolve), resolved by
# Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group pwned-passwords names api.pwnedpasswords.com. Host names in
# peer groups cannot be expressed: the agent learns their addresses from trusted DNS
# answers as they arrive, a static ruleset cannot. Safe side: a rule limited to such a
# group lets only the group's networks through, so flows to the names are denied until
# you add their addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...).
# New-NetFirewallRule -RemoteAddress takes no host names; Windows Server 2022 (build
# 20348) and later have FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress
# -AutoResolve), resolved by Microsoft Defender: this script does not create them.
# NOT EXPRESSED: peer group spamassassin-updates names sa-update.spamassassin.org. Host
# names in peer groups cannot be expressed: the agent learns their addresses from trusted
# DNS answers as they arrive, a static ruleset cannot. Safe side: a rule limited to such
# a group lets only the group's networks through, so flows to the names are denied until
# you add their addresses (Set-NetFirewallRule -Name ... -RemoteAddress ...).
# New-NetFirewallRule -RemoteAddress takes no host names; Windows Server 2022 (build
# 20348) and later have FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress
# -AutoResolve), resolved by Microsoft Defender: this script does not create them.
#Requires -RunAsAdministrator
$ErrorActionPreference = 'Stop'
$Group = 'portcullis mdaemon-securitygateway'

# What an earlier run of this script created.
Remove-NetFirewallRule -Group $Group -ErrorAction SilentlyContinue

# smtp-in-internet: receive email directly from the Internet
# source: 003_c65e6bc3d0cecd2a.txt row 1
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtp-in-internet/tcp' -DisplayName 'portcullis smtp-in-internet (tcp)' -Description 'receive email directly from the Internet (source: 003_c65e6bc3d0cecd2a.txt row 1)' -Direction Inbound -Protocol TCP -LocalPort '25' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtp-in-clients: clients send directly to SecurityGateway on 25
# source: 003_c65e6bc3d0cecd2a.txt row 3
# note: 587 or 465 are preferred; inbound 25 is open to any peer anyway
# (smtp-in-internet)
# peers: group clients, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtp-in-clients/tcp' -DisplayName 'portcullis smtp-in-clients (tcp)' -Description 'clients send directly to SecurityGateway on 25 (source: 003_c65e6bc3d0cecd2a.txt row 3) [feature client-submission]' -Direction Inbound -Protocol TCP -LocalPort '25' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtp-in-domain: domain mail servers send to SecurityGateway
# source: 003_c65e6bc3d0cecd2a.txt row 4
# note: inbound 25 is open to any peer anyway (smtp-in-internet)
# peers: group domain-mail-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtp-in-domain/tcp' -DisplayName 'portcullis smtp-in-domain (tcp)' -Description 'domain mail servers send to SecurityGateway (source: 003_c65e6bc3d0cecd2a.txt row 4)' -Direction Inbound -Protocol TCP -LocalPort '25' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# submission-in-internet: MSA: email clients send to SecurityGateway (authenticated)
# source: 003_c65e6bc3d0cecd2a.txt row 6
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/submission-in-internet/tcp' -DisplayName 'portcullis submission-in-internet (tcp)' -Description 'MSA: email clients send to SecurityGateway (authenticated) (source: 003_c65e6bc3d0cecd2a.txt row 6) [feature client-submission]' -Direction Inbound -Protocol TCP -LocalPort '587' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# submission-in-clients: MSA: email clients send to SecurityGateway (authenticated)
# source: 003_c65e6bc3d0cecd2a.txt row 7
# peers: group clients, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/submission-in-clients/tcp' -DisplayName 'portcullis submission-in-clients (tcp)' -Description 'MSA: email clients send to SecurityGateway (authenticated) (source: 003_c65e6bc3d0cecd2a.txt row 7) [feature client-submission]' -Direction Inbound -Protocol TCP -LocalPort '587' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# submission-in-domain: MSA: domain mail servers send to SecurityGateway on 587
# source: 003_c65e6bc3d0cecd2a.txt row 8
# peers: group domain-mail-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/submission-in-domain/tcp' -DisplayName 'portcullis submission-in-domain (tcp)' -Description 'MSA: domain mail servers send to SecurityGateway on 587 (source: 003_c65e6bc3d0cecd2a.txt row 8) [feature domain-submission]' -Direction Inbound -Protocol TCP -LocalPort '587' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtps-in-clients: SSL SMTP: clients send to SecurityGateway
# source: 003_c65e6bc3d0cecd2a.txt row 10
# peers: group clients, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtps-in-clients/tcp' -DisplayName 'portcullis smtps-in-clients (tcp)' -Description 'SSL SMTP: clients send to SecurityGateway (source: 003_c65e6bc3d0cecd2a.txt row 10) [feature client-submission]' -Direction Inbound -Protocol TCP -LocalPort '465' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtps-in-internet: SSL SMTP: clients send to SecurityGateway
# source: 003_c65e6bc3d0cecd2a.txt row 11
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtps-in-internet/tcp' -DisplayName 'portcullis smtps-in-internet (tcp)' -Description 'SSL SMTP: clients send to SecurityGateway (source: 003_c65e6bc3d0cecd2a.txt row 11) [feature client-submission]' -Direction Inbound -Protocol TCP -LocalPort '465' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtps-in-domain: SSL SMTP: domain mail servers send to SecurityGateway on 465
# source: 003_c65e6bc3d0cecd2a.txt row 12
# peers: group domain-mail-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtps-in-domain/tcp' -DisplayName 'portcullis smtps-in-domain (tcp)' -Description 'SSL SMTP: domain mail servers send to SecurityGateway on 465 (source: 003_c65e6bc3d0cecd2a.txt row 12) [feature domain-submission]' -Direction Inbound -Protocol TCP -LocalPort '465' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ui-http-clients: user interface over HTTP, only to redirect to HTTPS
# source: 003_c65e6bc3d0cecd2a.txt row 20
# peers: group clients, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ui-http-clients/tcp' -DisplayName 'portcullis ui-http-clients (tcp)' -Description 'user interface over HTTP, only to redirect to HTTPS (source: 003_c65e6bc3d0cecd2a.txt row 20) [feature http-ui]' -Direction Inbound -Protocol TCP -LocalPort '4000' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ui-http-internet: user interface over HTTP, only to redirect to HTTPS
# source: 003_c65e6bc3d0cecd2a.txt row 21
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ui-http-internet/tcp' -DisplayName 'portcullis ui-http-internet (tcp)' -Description 'user interface over HTTP, only to redirect to HTTPS (source: 003_c65e6bc3d0cecd2a.txt row 21) [feature http-ui]' -Direction Inbound -Protocol TCP -LocalPort '4000' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ui-https-clients: user interface over HTTPS
# source: 003_c65e6bc3d0cecd2a.txt row 22
# note: inbound 4443 is open to any peer anyway (ui-https-internet)
# peers: group clients, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ui-https-clients/tcp' -DisplayName 'portcullis ui-https-clients (tcp)' -Description 'user interface over HTTPS (source: 003_c65e6bc3d0cecd2a.txt row 22)' -Direction Inbound -Protocol TCP -LocalPort '4443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ui-https-internet: user interface over HTTPS
# source: 003_c65e6bc3d0cecd2a.txt row 23
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ui-https-internet/tcp' -DisplayName 'portcullis ui-https-internet (tcp)' -Description 'user interface over HTTPS (source: 003_c65e6bc3d0cecd2a.txt row 23)' -Direction Inbound -Protocol TCP -LocalPort '4443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# letsencrypt-http01: Let's Encrypt HTTP-01 challenges
# source: 003_c65e6bc3d0cecd2a.txt row 37
# note: Let's Encrypt publishes no IP ranges for the ACME service, so any peer
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/letsencrypt-http01/tcp' -DisplayName 'portcullis letsencrypt-http01 (tcp)' -Description 'Let''s Encrypt HTTP-01 challenges (source: 003_c65e6bc3d0cecd2a.txt row 37) [feature lets-encrypt]' -Direction Inbound -Protocol TCP -LocalPort '80' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# letsencrypt-https: Let's Encrypt HTTP-01 challenges redirected to HTTPS
# source: 003_c65e6bc3d0cecd2a.txt row 38
# note: Let's Encrypt publishes no IP ranges for the ACME service, so any peer
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/letsencrypt-https/tcp' -DisplayName 'portcullis letsencrypt-https (tcp)' -Description 'Let''s Encrypt HTTP-01 challenges redirected to HTTPS (source: 003_c65e6bc3d0cecd2a.txt row 38) [feature lets-encrypt]' -Direction Inbound -Protocol TCP -LocalPort '443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# failsafe-ssh: keep SSH reachable so that a wrong policy cannot lock the operator out
# source: site failsafe (set failsafe = false to remove)
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/failsafe-ssh/tcp' -DisplayName 'portcullis failsafe-ssh (tcp)' -Description 'keep SSH reachable so that a wrong policy cannot lock the operator out (source: site failsafe (set failsafe = false to remove))' -Direction Inbound -Protocol TCP -LocalPort '22' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtp-out-internet: send email to the Internet
# source: 003_c65e6bc3d0cecd2a.txt row 2
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtp-out-internet/tcp' -DisplayName 'portcullis smtp-out-internet (tcp)' -Description 'send email to the Internet (source: 003_c65e6bc3d0cecd2a.txt row 2)' -Direction Outbound -Protocol TCP -RemotePort '25' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# smtp-out-domain: SecurityGateway delivers to the domain mail servers
# source: 003_c65e6bc3d0cecd2a.txt row 5
# note: outbound 25 is open to any peer anyway (smtp-out-internet)
# peers: group domain-mail-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/smtp-out-domain/tcp' -DisplayName 'portcullis smtp-out-domain (tcp)' -Description 'SecurityGateway delivers to the domain mail servers (source: 003_c65e6bc3d0cecd2a.txt row 5)' -Direction Outbound -Protocol TCP -RemotePort '25' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# submission-out-domain: MSA: SecurityGateway sends to domain mail servers on 587
# source: 003_c65e6bc3d0cecd2a.txt row 9
# peers: group domain-mail-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/submission-out-domain/tcp' -DisplayName 'portcullis submission-out-domain (tcp)' -Description 'MSA: SecurityGateway sends to domain mail servers on 587 (source: 003_c65e6bc3d0cecd2a.txt row 9) [feature domain-submission]' -Direction Outbound -Protocol TCP -RemotePort '587' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# remote-pop3: collect mail from a third party with Remote POP Accounts
# source: 003_c65e6bc3d0cecd2a.txt row 13
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/remote-pop3/tcp' -DisplayName 'portcullis remote-pop3 (tcp)' -Description 'collect mail from a third party with Remote POP Accounts (source: 003_c65e6bc3d0cecd2a.txt row 13) [feature remote-pop]' -Direction Outbound -Protocol TCP -RemotePort '110' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# remote-pop3s: collect mail over secure POP3 with Remote POP Accounts
# source: 003_c65e6bc3d0cecd2a.txt row 14
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/remote-pop3s/tcp' -DisplayName 'portcullis remote-pop3s (tcp)' -Description 'collect mail over secure POP3 with Remote POP Accounts (source: 003_c65e6bc3d0cecd2a.txt row 14) [feature remote-pop]' -Direction Outbound -Protocol TCP -RemotePort '995' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# dns: DNS lookups
# source: 003_c65e6bc3d0cecd2a.txt row 15
# note: the vendor lists UDP only; answers too large for UDP need TCP 53, add a site rule
# if the resolvers truncate
# peers: group dns-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/dns/udp' -DisplayName 'portcullis dns (udp)' -Description 'DNS lookups (source: 003_c65e6bc3d0cecd2a.txt row 15)' -Direction Outbound -Protocol UDP -RemotePort '53' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# minger: Minger user verification lookups to MDaemon
# source: 003_c65e6bc3d0cecd2a.txt row 16
# peers: group mdaemon-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/minger/udp' -DisplayName 'portcullis minger (udp)' -Description 'Minger user verification lookups to MDaemon (source: 003_c65e6bc3d0cecd2a.txt row 16) [feature minger]' -Direction Outbound -Protocol UDP -RemotePort '4069' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ldap: query LDAP or Active Directory for user verification
# source: 003_c65e6bc3d0cecd2a.txt row 17
# peers: group ldap-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ldap/tcp' -DisplayName 'portcullis ldap (tcp)' -Description 'query LDAP or Active Directory for user verification (source: 003_c65e6bc3d0cecd2a.txt row 17) [feature ldap]' -Direction Outbound -Protocol TCP -RemotePort '389' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# mdaemon-xml-api: secure communication with MDaemon's XML API for user verification
# source: 003_c65e6bc3d0cecd2a.txt row 18
# peers: group mdaemon-servers, which this site lets be any peer (any_peer_groups, or
# vendor_peers = "any")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/mdaemon-xml-api/tcp' -DisplayName 'portcullis mdaemon-xml-api (tcp)' -Description 'secure communication with MDaemon''s XML API for user verification (source: 003_c65e6bc3d0cecd2a.txt row 18) [feature mdaemon-xml-api]' -Direction Outbound -Protocol TCP -RemotePort '444' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# m365-verification: Microsoft 365 user verification
# source: 003_c65e6bc3d0cecd2a.txt row 19
# note: to "Microsoft Servers"; the vendor's list of URLs is not in the document ("List
# URLS that it uses here...")
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/m365-verification/tcp' -DisplayName 'portcullis m365-verification (tcp)' -Description 'Microsoft 365 user verification (source: 003_c65e6bc3d0cecd2a.txt row 19) [feature m365-verification]' -Direction Outbound -Protocol TCP -RemotePort '443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# mta-sts: download MTA-STS policies
# source: 003_c65e6bc3d0cecd2a.txt row 28
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/mta-sts/tcp' -DisplayName 'portcullis mta-sts (tcp)' -Description 'download MTA-STS policies (source: 003_c65e6bc3d0cecd2a.txt row 28)' -Direction Outbound -Protocol TCP -RemotePort '443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# tls-reports: upload TLS reports
# source: 003_c65e6bc3d0cecd2a.txt row 29
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/tls-reports/tcp' -DisplayName 'portcullis tls-reports (tcp)' -Description 'upload TLS reports (source: 003_c65e6bc3d0cecd2a.txt row 29)' -Direction Outbound -Protocol TCP -RemotePort '443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# ai-classification: AI classification through the third-party provider
# source: 003_c65e6bc3d0cecd2a.txt row 32
# note: the provider's hosts depend on the provider chosen
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ai-classification/tcp' -DisplayName 'portcullis ai-classification (tcp)' -Description 'AI classification through the third-party provider (source: 003_c65e6bc3d0cecd2a.txt row 32) [feature ai-classification]' -Direction Outbound -Protocol TCP -RemotePort '443' -RemoteAddress Any -Action Allow -Profile Any -Enabled True | Out-Null

# mdaemon-services: license requests, install survey, registration info, eM Client
# licenses
# source: 003_c65e6bc3d0cecd2a.txt row 24
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group mdaemon-services
# DISABLED: peer group mdaemon-services has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/mdaemon-services/tcp' -DisplayName 'portcullis mdaemon-services (tcp)' -Description 'license requests, install survey, registration info, eM Client licenses (source: 003_c65e6bc3d0cecd2a.txt row 24) DISABLED: peer group mdaemon-services has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# update-checker: update checker
# source: 003_c65e6bc3d0cecd2a.txt row 25
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group mdaemon-files
# DISABLED: peer group mdaemon-files has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/update-checker/tcp' -DisplayName 'portcullis update-checker (tcp)' -Description 'update checker (source: 003_c65e6bc3d0cecd2a.txt row 25) DISABLED: peer group mdaemon-files has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# microsoft-oauth: OAuth with Microsoft
# source: 003_c65e6bc3d0cecd2a.txt row 26
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group microsoft-login
# DISABLED: peer group microsoft-login has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/microsoft-oauth/tcp' -DisplayName 'portcullis microsoft-oauth (tcp)' -Description 'OAuth with Microsoft (source: 003_c65e6bc3d0cecd2a.txt row 26) DISABLED: peer group microsoft-login has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# public-suffix-list: download the public suffix list used by DMARC
# source: 003_c65e6bc3d0cecd2a.txt row 27
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group public-suffix
# DISABLED: peer group public-suffix has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/public-suffix-list/tcp' -DisplayName 'portcullis public-suffix-list (tcp)' -Description 'download the public suffix list used by DMARC (source: 003_c65e6bc3d0cecd2a.txt row 27) DISABLED: peer group public-suffix has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# anonymous-stats: upload anonymous statistical data
# source: 003_c65e6bc3d0cecd2a.txt row 30
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group mdaemon-stats
# DISABLED: peer group mdaemon-stats has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/anonymous-stats/tcp' -DisplayName 'portcullis anonymous-stats (tcp)' -Description 'upload anonymous statistical data (source: 003_c65e6bc3d0cecd2a.txt row 30) DISABLED: peer group mdaemon-stats has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# pwned-passwords: check for compromised passwords
# source: 003_c65e6bc3d0cecd2a.txt row 31
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group pwned-passwords
# DISABLED: peer group pwned-passwords has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/pwned-passwords/tcp' -DisplayName 'portcullis pwned-passwords (tcp)' -Description 'check for compromised passwords (source: 003_c65e6bc3d0cecd2a.txt row 31) DISABLED: peer group pwned-passwords has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# ikarus-updates: IKARUS virus definition updates
# source: 003_c65e6bc3d0cecd2a.txt row 33
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group ikarus-updates
# DISABLED: peer group ikarus-updates has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/ikarus-updates/tcp' -DisplayName 'portcullis ikarus-updates (tcp)' -Description 'IKARUS virus definition updates (source: 003_c65e6bc3d0cecd2a.txt row 33) DISABLED: peer group ikarus-updates has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# clamav-updates: ClamAV virus definition updates
# source: 003_c65e6bc3d0cecd2a.txt row 34
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group clamav-database
# DISABLED: peer group clamav-database has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/clamav-updates/tcp' -DisplayName 'portcullis clamav-updates (tcp)' -Description 'ClamAV virus definition updates (source: 003_c65e6bc3d0cecd2a.txt row 34) DISABLED: peer group clamav-database has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# outbreak-protection: Outbreak Protection lookups
# source: 003_c65e6bc3d0cecd2a.txt row 35
# note: the traffic on port 80 is not HTTP but proprietary encryption, so do not route it
# through an HTTP proxy
# peers: group ctmail-resolvers
# DISABLED: peer group ctmail-resolvers has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/outbreak-protection/tcp' -DisplayName 'portcullis outbreak-protection (tcp)' -Description 'Outbreak Protection lookups (source: 003_c65e6bc3d0cecd2a.txt row 35) DISABLED: peer group ctmail-resolvers has only host names' -Direction Outbound -Protocol TCP -RemotePort '80' -Action Allow -Profile Any -Enabled False | Out-Null

# spamassassin-updates: SpamAssassin rule updates
# source: 003_c65e6bc3d0cecd2a.txt row 36
# note: the mirrors are listed at https://sa-update.spamassassin.org/MIRRORED.BY and
# change; add the ones in use under [peers] spamassassin-updates = [..]; outbound 443 is
# open to any peer anyway through mta-sts and tls-reports
# peers: group spamassassin-updates
# DISABLED: peer group spamassassin-updates has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/spamassassin-updates/tcp' -DisplayName 'portcullis spamassassin-updates (tcp)' -Description 'SpamAssassin rule updates (source: 003_c65e6bc3d0cecd2a.txt row 36) DISABLED: peer group spamassassin-updates has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# letsencrypt-acme: communicate with Let's Encrypt (ACME)
# source: 003_c65e6bc3d0cecd2a.txt row 39
# note: outbound 443 is open to any peer anyway through mta-sts and tls-reports
# peers: group letsencrypt-acme
# DISABLED: peer group letsencrypt-acme has only host names; add their addresses
# (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/letsencrypt-acme/tcp' -DisplayName 'portcullis letsencrypt-acme (tcp)' -Description 'communicate with Let''s Encrypt (ACME) (source: 003_c65e6bc3d0cecd2a.txt row 39) [feature lets-encrypt] DISABLED: peer group letsencrypt-acme has only host names' -Direction Outbound -Protocol TCP -RemotePort '443' -Action Allow -Profile Any -Enabled False | Out-Null

# icmp_echo = true: echo requests pass both ways.
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/icmp-echo/ICMPv4/in' -DisplayName 'portcullis icmp-echo (ICMPv4 in)' -Direction Inbound -Protocol ICMPv4 -IcmpType 8 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/icmp-echo/ICMPv6/in' -DisplayName 'portcullis icmp-echo (ICMPv6 in)' -Direction Inbound -Protocol ICMPv6 -IcmpType 128 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/icmp-echo/ICMPv4/out' -DisplayName 'portcullis icmp-echo (ICMPv4 out)' -Direction Outbound -Protocol ICMPv4 -IcmpType 8 -Action Allow -Profile Any | Out-Null
New-NetFirewallRule -Group $Group -Name 'portcullis/mdaemon-securitygateway/icmp-echo/ICMPv6/out' -DisplayName 'portcullis icmp-echo (ICMPv6 out)' -Direction Outbound -Protocol ICMPv6 -IcmpType 128 -Action Allow -Profile Any | Out-Null

# enforce: what no allow rule opens is blocked, both ways. The failsafe rule keeps the
# port the site names (failsafe_port, 22 by default; RDP is 3389).
Set-NetFirewallProfile -Profile Domain,Private,Public -Enabled True -DefaultInboundAction Block -DefaultOutboundAction Block
