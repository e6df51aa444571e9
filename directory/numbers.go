package directory

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/go-ldap/ldap/v3"
)

// Number allocation. Two admins may run `herd user add` at the same moment,
// so "read the highest uidNumber, add one" alone would hand out the same
// number twice. herd keeps a counter entry per kind (cn=herd-next-uidnumber
// and cn=herd-next-gidnumber under the base, organizationalRole with the next
// number in description) and claims a number with ONE modify that deletes the
// old value and adds the new one: LDAP applies a modify atomically, and the
// delete fails with noSuchAttribute when another client changed the value in
// between, so exactly one of two racing clients wins each number; the loser
// re-reads and tries again. This works on any LDAP server (no schema, no
// server-side counter extension). Numbers created by other tools (a NAS web
// page) do not move the counter, so the claim also jumps over the highest
// number in use, and AddUser/AddGroup re-check for a clash after adding.

// maxClaimAttempts bounds the compare-and-swap retries.
const maxClaimAttempts = 100

// kind names a number space.
type kind struct {
	counterCN string // cn of the counter entry
	attr      string // uidNumber or gidNumber
	class     string // posixAccount or posixGroup
}

var (
	uidKind = kind{"herd-next-uidnumber", "uidNumber", "posixAccount"}
	gidKind = kind{"herd-next-gidnumber", "gidNumber", "posixGroup"}
)

// counterDN is the counter entry's DN.
func (d *Dir) counterDN(k kind) string { return "cn=" + k.counterCN + "," + d.S.Base }

// highestInUse is the highest number of kind in use (0 if none).
func (d *Dir) highestInUse(k kind) (int, error) {
	entries, err := d.search("(objectClass="+k.class+")", k.attr)
	if err != nil {
		return 0, err
	}
	hi := 0
	for _, e := range entries {
		if n, err := strconv.Atoi(e.GetAttributeValue(k.attr)); err == nil && n > hi {
			hi = n
		}
	}
	return hi, nil
}

// readCounter returns the counter's value, or ok=false when the entry does
// not exist yet.
func (d *Dir) readCounter(k kind) (val string, ok bool, err error) {
	req := ldap.NewSearchRequest(d.counterDN(k), ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"description"}, nil)
	res, err := d.conn.Search(req)
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", d.counterDN(k), err)
	}
	if len(res.Entries) != 1 {
		return "", false, fmt.Errorf("read %s: %d entries", d.counterDN(k), len(res.Entries))
	}
	return res.Entries[0].GetAttributeValue("description"), true, nil
}

// claimNumber atomically takes the next free number of kind at or above min.
func (d *Dir) claimNumber(k kind, min int) (int, error) {
	for attempt := 0; attempt < maxClaimAttempts; attempt++ {
		cur, ok, err := d.readCounter(k)
		if err != nil {
			return 0, err
		}
		hi, err := d.highestInUse(k)
		if err != nil {
			return 0, err
		}
		next := max(min, hi+1)
		if !ok {
			// First use: create the counter already past the number we
			// take. If another client created it first, the add fails
			// with entryAlreadyExists and we go round again.
			add := ldap.NewAddRequest(d.counterDN(k), nil)
			add.Attribute("objectClass", []string{"organizationalRole"})
			add.Attribute("cn", []string{k.counterCN})
			add.Attribute("description", []string{strconv.Itoa(next + 1)})
			err := d.conn.Add(add)
			if err == nil {
				return next, nil
			}
			if ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
				continue
			}
			return 0, fmt.Errorf("create number counter %s: %w", d.counterDN(k), err)
		}
		if n, err := strconv.Atoi(cur); err == nil && n > next {
			next = n
		}
		mod := ldap.NewModifyRequest(d.counterDN(k), nil)
		if cur == "" {
			mod.Add("description", []string{strconv.Itoa(next + 1)})
		} else {
			mod.Delete("description", []string{cur})
			mod.Add("description", []string{strconv.Itoa(next + 1)})
		}
		err = d.conn.Modify(mod)
		if err == nil {
			return next, nil
		}
		// noSuchAttribute: the old value is gone, someone else claimed it.
		// attributeOrValueExists: cur was "" and someone else added one.
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchAttribute) ||
			ldap.IsErrorWithCode(err, ldap.LDAPResultAttributeOrValueExists) {
			slog.Debug("number claim lost a race, retrying", "counter", d.counterDN(k), "value", cur)
			continue
		}
		return 0, fmt.Errorf("claim a %s from %s: %w", k.attr, d.counterDN(k), err)
	}
	return 0, fmt.Errorf("could not claim a %s after %d attempts (too many concurrent changes)", k.attr, maxClaimAttempts)
}

// othersWithNumber lists entries of kind other than dn that use number n.
func (d *Dir) othersWithNumber(k kind, n int, dn string) ([]string, error) {
	entries, err := d.search(fmt.Sprintf("(&(objectClass=%s)(%s=%d))", k.class, k.attr, n), "1.1")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !sameDN(e.DN, dn) {
			out = append(out, e.DN)
		}
	}
	return out, nil
}

// sameDN compares two DNs the way LDAP does (case-insensitive attribute
// types and values for the schemas herd uses).
func sameDN(a, b string) bool {
	da, err1 := ldap.ParseDN(a)
	db, err2 := ldap.ParseDN(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return da.EqualFold(db)
}

// giveBackOnClash deletes the just-added entry dn when another entry uses
// the explicitly chosen number n (added between our check and our add).
func (d *Dir) giveBackOnClash(k kind, n int, dn string) error {
	others, err := d.othersWithNumber(k, n, dn)
	if err != nil {
		return err
	}
	if len(others) == 0 {
		return nil
	}
	if err := d.conn.Del(ldap.NewDelRequest(dn, nil)); err != nil {
		return fmt.Errorf("%s %d was taken by %s meanwhile and removing %s failed: %w", k.attr, n, others[0], dn, err)
	}
	return fmt.Errorf("%s %d: %w by %s (added at the same moment; %s was not created)", k.attr, n, errNumberTaken, others[0], dn)
}

// errNumberTaken means a number chosen explicitly is already used.
var errNumberTaken = errors.New("number already in use")
