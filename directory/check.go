package directory

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/go-ldap/ldap/v3"

	"github.com/herdlab/herd/internal/ldaphash"
)

// Report is the result of Check.
type Report struct {
	URI     string `json:"uri"`
	TLS     bool   `json:"tls"`
	BoundAs string `json:"bound_as"`
	Users   int    `json:"users"`
	Groups  int    `json:"groups"`
	// NodeView is whom nodes bind as (ldap.bind_dn or "anonymous") and
	// NodeUsers how many accounts they see.
	NodeView  string   `json:"node_view"`
	NodeUsers int      `json:"node_users"`
	Problems  []string `json:"problems"`
}

// Check searches the base and reports what breaks logins on nodes:
// duplicate uidNumbers (and gidNumbers), users whose primary group does not
// exist, and users without homeDirectory or loginShell.
func (d *Dir) Check() (*Report, error) {
	r := &Report{URI: d.S.URI, TLS: d.TLS, BoundAs: d.S.AdminDN, Problems: []string{}}
	base, err := d.search("(objectClass=*)", "1.1")
	if err != nil {
		return nil, err
	}
	if len(base) == 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("base %s holds no entries", d.S.Base))
	}
	users, err := d.search("(objectClass=posixAccount)", userAttrs...)
	if err != nil {
		return nil, err
	}
	groups, err := d.Groups()
	if err != nil {
		return nil, err
	}
	r.Users, r.Groups = len(users), len(groups)
	gids := map[int]bool{}
	byGID := map[int][]string{}
	for _, g := range groups {
		gids[g.GID] = true
		byGID[g.GID] = append(byGID[g.GID], g.Name)
	}
	byUID := map[int][]string{}
	for _, e := range users {
		u := entryToUser(e)
		raw := e.GetAttributeValue("uidNumber")
		if _, err := strconv.Atoi(raw); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("user %s (%s): uidNumber %q is not a number", u.Name, e.DN, raw))
		} else {
			byUID[u.UID] = append(byUID[u.UID], u.Name)
		}
		if !gids[u.GID] {
			r.Problems = append(r.Problems, fmt.Sprintf("user %s: primary group gidNumber %d does not exist (no posixGroup has it)", u.Name, u.GID))
		}
		if u.Home == "" {
			r.Problems = append(r.Problems, fmt.Sprintf("user %s: no homeDirectory", u.Name))
		}
		if u.Shell == "" {
			r.Problems = append(r.Problems, fmt.Sprintf("user %s: no loginShell", u.Name))
		}
	}
	uids := make([]int, 0, len(byUID))
	for n := range byUID {
		uids = append(uids, n)
	}
	sort.Ints(uids)
	for _, n := range uids {
		if names := byUID[n]; len(names) > 1 {
			sort.Strings(names)
			r.Problems = append(r.Problems, fmt.Sprintf("uidNumber %d is used by %d users: %v", n, len(names), names))
		}
	}
	d.checkNodeView(r)
	gidList := make([]int, 0, len(byGID))
	for n := range byGID {
		gidList = append(gidList, n)
	}
	sort.Ints(gidList)
	for _, n := range gidList {
		if names := byGID[n]; len(names) > 1 {
			r.Problems = append(r.Problems, fmt.Sprintf("gidNumber %d is used by %d groups: %v", n, len(names), names))
		}
	}
	return r, nil
}

// checkNodeView looks at the directory the way nodes' SSSD does (bound as
// ldap.bind_dn, or anonymously) and reports when they would miss users or
// could read password hashes.
func (d *Dir) checkNodeView(r *Report) {
	r.NodeView = "anonymous"
	if d.S.BindDN != "" {
		r.NodeView = d.S.BindDN
	}
	nd, err := dial(d.S)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("nodes' view (%s): %v", r.NodeView, err))
		return
	}
	defer nd.Close()
	if d.S.BindDN != "" {
		pw, err := ReadSecretFile(d.S.BindPasswordFile)
		if err != nil {
			r.Problems = append(r.Problems, d.S.fieldErr("ldap.bind_password_file", "%v", err).Error())
			return
		}
		if err := nd.conn.Bind(d.S.BindDN, pw); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("nodes bind as %s (ldap.bind_dn) and that fails: %v (check ldap.bind_password_file %s)",
				d.S.BindDN, err, d.S.BindPasswordFile))
			return
		}
	}
	entries, err := nd.search("(objectClass=posixAccount)", "uid", "userPassword")
	// A server hiding the base from this identity answers with one of
	// these instead of an empty result: to SSSD both mean "no users".
	if ldap.IsErrorWithCode(err, ldap.LDAPResultInsufficientAccessRights) || ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		entries, err = nil, nil
	}
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("nodes (%s) cannot search the users: %v", r.NodeView, err))
		return
	}
	r.NodeUsers = len(entries)
	if r.NodeUsers < r.Users {
		r.Problems = append(r.Problems, fmt.Sprintf("nodes (%s) see %d of %d users: SSSD will not find the others (the server's access rules must allow reading posixAccount entries)",
			r.NodeView, r.NodeUsers, r.Users))
	}
	leaked := 0
	for _, e := range entries {
		// Reading one's own hash is normal ("by self write" implies it).
		if e.GetAttributeValue("userPassword") != "" && !sameDN(e.DN, d.S.BindDN) {
			leaked++
		}
	}
	if leaked > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("nodes (%s) can read the userPassword of %d users: restrict userPassword to auth (e.g. \"by anonymous auth\", \"by self write\", \"by * none\")",
			r.NodeView, leaked))
	}
}

// HashSSHA returns the {SSHA} userPassword value of password.
func HashSSHA(password string) (string, error) { return ldaphash.SSHA(password) }
