package directory

import (
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/go-ldap/ldap/v3"
)

// Group is one posixGroup.
type Group struct {
	Name    string   `json:"name"`
	DN      string   `json:"dn"`
	GID     int      `json:"gid"`
	Members []string `json:"members"`
}

var groupAttrs = []string{"cn", "gidNumber", "memberUid"}

// entryToGroup converts a search entry.
func entryToGroup(e *ldap.Entry) Group {
	gid, _ := strconv.Atoi(e.GetAttributeValue("gidNumber"))
	m := e.GetAttributeValues("memberUid")
	sort.Strings(m)
	if m == nil {
		m = []string{}
	}
	return Group{Name: e.GetAttributeValue("cn"), DN: e.DN, GID: gid, Members: m}
}

// Groups lists every posixGroup under the base, sorted by name.
func (d *Dir) Groups() ([]Group, error) {
	entries, err := d.search("(objectClass=posixGroup)", groupAttrs...)
	if err != nil {
		return nil, err
	}
	out := make([]Group, 0, len(entries))
	for _, e := range entries {
		out = append(out, entryToGroup(e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Group returns the named group.
func (d *Dir) Group(name string) (*Group, error) {
	entries, err := d.search(fmt.Sprintf("(&(objectClass=posixGroup)(cn=%s))", ldap.EscapeFilter(name)), groupAttrs...)
	if err != nil {
		return nil, err
	}
	switch len(entries) {
	case 0:
		return nil, fmt.Errorf("group %s: %w", name, ErrNotFound)
	case 1:
		g := entryToGroup(entries[0])
		return &g, nil
	}
	return nil, fmt.Errorf("group %s: %d entries under %s carry this cn; fix the directory first", name, len(entries), d.S.Base)
}

// AddGroup creates a posixGroup under ldap.groups_ou; gid 0 takes the next
// free number above ldap.gid_min.
func (d *Dir) AddGroup(name string, gid int) (*Group, error) {
	if err := CheckName("group", name); err != nil {
		return nil, err
	}
	if _, err := d.Group(name); err == nil {
		return nil, fmt.Errorf("group %s already exists", name)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	dn := "cn=" + name + "," + d.groupsDN()
	if gid != 0 {
		if gid < 1 {
			return nil, fmt.Errorf("--gid %d must be positive", gid)
		}
		if others, err := d.othersWithNumber(gidKind, gid, dn); err != nil {
			return nil, err
		} else if len(others) > 0 {
			return nil, fmt.Errorf("gid %d: %w by %s", gid, errNumberTaken, others[0])
		}
		if err := d.addGroupEntry(dn, name, gid); err != nil {
			return nil, err
		}
		if err := d.giveBackOnClash(gidKind, gid, dn); err != nil {
			return nil, err
		}
		return d.Group(name)
	}
	for attempt := 0; attempt < 10; attempt++ {
		n, err := d.claimNumber(gidKind, d.S.GIDMin)
		if err != nil {
			return nil, err
		}
		if err := d.addGroupEntry(dn, name, n); err != nil {
			return nil, err
		}
		others, err := d.othersWithNumber(gidKind, n, dn)
		if err != nil {
			return nil, err
		}
		if len(others) == 0 {
			return d.Group(name)
		}
		if err := d.conn.Del(ldap.NewDelRequest(dn, nil)); err != nil {
			return nil, fmt.Errorf("gid %d clashed with %s and removing %s failed: %w", n, others[0], dn, err)
		}
	}
	return nil, fmt.Errorf("group %s: every claimed gid clashed with an entry made by another tool", name)
}

// addGroupEntry sends the LDAP add for a new group.
func (d *Dir) addGroupEntry(dn, name string, gid int) error {
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"posixGroup"})
	add.Attribute("cn", []string{name})
	add.Attribute("gidNumber", []string{strconv.Itoa(gid)})
	if err := d.conn.Add(add); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
			return fmt.Errorf("group %s already exists (%s)", name, dn)
		}
		return fmt.Errorf("add %s: %w", dn, err)
	}
	return nil
}

// DeleteGroup removes a group; it refuses while a user has it as primary
// group (their files would then belong to a number without a name).
func (d *Dir) DeleteGroup(name string) error {
	g, err := d.Group(name)
	if err != nil {
		return err
	}
	users, err := d.search(fmt.Sprintf("(&(objectClass=posixAccount)(gidNumber=%d))", g.GID), "uid")
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("group %s is the primary group of %d user(s), e.g. %s; move or delete them first",
			name, len(users), users[0].GetAttributeValue("uid"))
	}
	if err := d.conn.Del(ldap.NewDelRequest(g.DN, nil)); err != nil {
		return fmt.Errorf("delete %s: %w", g.DN, err)
	}
	return nil
}

// AddMember adds user to group's memberUid; the user must exist.
func (d *Dir) AddMember(group, user string) error {
	g, err := d.Group(group)
	if err != nil {
		return err
	}
	if _, err := d.findUser(user); err != nil {
		return err
	}
	mod := ldap.NewModifyRequest(g.DN, nil)
	mod.Add("memberUid", []string{user})
	if err := d.conn.Modify(mod); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultAttributeOrValueExists) {
			return fmt.Errorf("%s is already a member of %s", user, group)
		}
		return fmt.Errorf("add %s to %s: %w", user, g.DN, err)
	}
	return nil
}

// RemoveMember removes user from group's memberUid.
func (d *Dir) RemoveMember(group, user string) error {
	g, err := d.Group(group)
	if err != nil {
		return err
	}
	mod := ldap.NewModifyRequest(g.DN, nil)
	mod.Delete("memberUid", []string{user})
	if err := d.conn.Modify(mod); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchAttribute) {
			return fmt.Errorf("%s is not a member of %s", user, group)
		}
		return fmt.Errorf("remove %s from %s: %w", user, g.DN, err)
	}
	return nil
}
