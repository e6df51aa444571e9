package directory

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// nameRe is what herd accepts as a user or group name: what useradd and
// every NAS accept, so the name works for NFS owners and SMB logins alike.
var nameRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// ErrNotFound means the named user or group does not exist.
var ErrNotFound = errors.New("not found")

// User is one posixAccount.
type User struct {
	Name  string `json:"name"`
	DN    string `json:"dn"`
	UID   int    `json:"uid"`
	GID   int    `json:"gid"`
	Group string `json:"group,omitempty"` // name of the primary group, "" if it does not exist
	Gecos string `json:"gecos,omitempty"`
	Home  string `json:"home"`
	Shell string `json:"shell"`
	// Groups are the groups listing the user in memberUid.
	Groups      []string `json:"groups,omitempty"`
	HasPassword bool     `json:"has_password"`
}

// NewUser is what `herd user add` asks for; zero values take the defaults.
type NewUser struct {
	Name  string
	UID   int    // 0: next free number above ldap.uid_min
	Group string // primary group; "" is ldap.default_group
	Shell string // "" is ldap.override_shell
	Gecos string
	Home  string // "" is nas.home_root/NAME
}

var userAttrs = []string{"uid", "uidNumber", "gidNumber", "gecos", "homeDirectory", "loginShell", "userPassword"}

// CheckName refuses names that are not valid POSIX user/group names.
func CheckName(what, name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("%s name %q is not valid: use 1-32 of a-z 0-9 _ - starting with a letter or _", what, name)
	}
	return nil
}

// entryToUser converts a search entry (groups are filled in by the caller).
func entryToUser(e *ldap.Entry) User {
	uid, _ := strconv.Atoi(e.GetAttributeValue("uidNumber"))
	gid, _ := strconv.Atoi(e.GetAttributeValue("gidNumber"))
	return User{
		Name: e.GetAttributeValue("uid"), DN: e.DN, UID: uid, GID: gid,
		Gecos: e.GetAttributeValue("gecos"), Home: e.GetAttributeValue("homeDirectory"),
		Shell: e.GetAttributeValue("loginShell"), HasPassword: e.GetAttributeValue("userPassword") != "",
	}
}

// findUser returns the entry of user name.
func (d *Dir) findUser(name string) (*ldap.Entry, error) {
	entries, err := d.search(fmt.Sprintf("(&(objectClass=posixAccount)(uid=%s))", ldap.EscapeFilter(name)), userAttrs...)
	if err != nil {
		return nil, err
	}
	switch len(entries) {
	case 0:
		return nil, fmt.Errorf("user %s: %w", name, ErrNotFound)
	case 1:
		return entries[0], nil
	}
	return nil, fmt.Errorf("user %s: %d entries under %s carry this uid; fix the directory first (herd ldap check)", name, len(entries), d.S.Base)
}

// Users lists every posixAccount under the base, sorted by name, with
// primary and supplementary group names resolved.
func (d *Dir) Users() ([]User, error) {
	entries, err := d.search("(objectClass=posixAccount)", userAttrs...)
	if err != nil {
		return nil, err
	}
	groups, err := d.Groups()
	if err != nil {
		return nil, err
	}
	users := make([]User, 0, len(entries))
	for _, e := range entries {
		users = append(users, d.resolve(entryToUser(e), groups))
	}
	sort.Slice(users, func(i, j int) bool { return users[i].Name < users[j].Name })
	return users, nil
}

// resolve fills in the group names of u.
func (d *Dir) resolve(u User, groups []Group) User {
	for _, g := range groups {
		if g.GID == u.GID && u.Group == "" {
			u.Group = g.Name
		}
		for _, m := range g.Members {
			if m == u.Name {
				u.Groups = append(u.Groups, g.Name)
			}
		}
	}
	return u
}

// User returns one user with its groups resolved.
func (d *Dir) User(name string) (*User, error) {
	e, err := d.findUser(name)
	if err != nil {
		return nil, err
	}
	groups, err := d.Groups()
	if err != nil {
		return nil, err
	}
	u := d.resolve(entryToUser(e), groups)
	return &u, nil
}

// AddUser creates a posixAccount/shadowAccount/inetOrgPerson entry under
// ldap.users_ou. The primary group must already exist: herd does not create
// it on the fly, because a typo in --group would otherwise silently make a
// new group.
func (d *Dir) AddUser(nu NewUser) (*User, error) {
	if err := CheckName("user", nu.Name); err != nil {
		return nil, err
	}
	if _, err := d.findUser(nu.Name); err == nil {
		return nil, fmt.Errorf("user %s already exists", nu.Name)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	group := nu.Group
	if group == "" {
		group = d.S.DefaultGroup
	}
	g, err := d.Group(group)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("primary group %s does not exist: create it first with `herd group add %s`, or pass --group", group, group)
	}
	if err != nil {
		return nil, err
	}
	shell := nu.Shell
	if shell == "" {
		shell = d.S.DefaultShell
	}
	if shell == "" {
		shell = "/bin/bash"
	}
	home := nu.Home
	if home == "" {
		root := d.S.HomeRoot
		if root == "" {
			root = "/home"
		}
		home = path.Join(root, nu.Name)
	}
	if !path.IsAbs(home) || !path.IsAbs(shell) {
		return nil, fmt.Errorf("home %q and shell %q must be absolute paths", home, shell)
	}
	dn := "uid=" + nu.Name + "," + d.usersDN()
	if nu.UID != 0 {
		if nu.UID < 1 {
			return nil, fmt.Errorf("--uid %d must be positive", nu.UID)
		}
		if others, err := d.othersWithNumber(uidKind, nu.UID, dn); err != nil {
			return nil, err
		} else if len(others) > 0 {
			return nil, fmt.Errorf("uid %d: %w by %s", nu.UID, errNumberTaken, others[0])
		}
		if err := d.addUserEntry(dn, nu, g.GID, nu.UID, home, shell); err != nil {
			return nil, err
		}
		// Someone may have taken the number between the check and the add.
		if err := d.giveBackOnClash(uidKind, nu.UID, dn); err != nil {
			return nil, err
		}
		return d.User(nu.Name)
	}
	for attempt := 0; attempt < 10; attempt++ {
		uid, err := d.claimNumber(uidKind, d.S.UIDMin)
		if err != nil {
			return nil, err
		}
		if err := d.addUserEntry(dn, nu, g.GID, uid, home, shell); err != nil {
			return nil, err
		}
		// A tool other than herd may have taken the number meanwhile
		// (the counter only orders herd's own claims): give it back.
		others, err := d.othersWithNumber(uidKind, uid, dn)
		if err != nil {
			return nil, err
		}
		if len(others) == 0 {
			return d.User(nu.Name)
		}
		if err := d.conn.Del(ldap.NewDelRequest(dn, nil)); err != nil {
			return nil, fmt.Errorf("uid %d clashed with %s and removing %s failed: %w", uid, others[0], dn, err)
		}
	}
	return nil, fmt.Errorf("user %s: every claimed uid clashed with an entry made by another tool", nu.Name)
}

// addUserEntry sends the LDAP add for a new user.
func (d *Dir) addUserEntry(dn string, nu NewUser, gid, uid int, home, shell string) error {
	add := ldap.NewAddRequest(dn, nil)
	add.Attribute("objectClass", []string{"inetOrgPerson", "posixAccount", "shadowAccount"})
	add.Attribute("uid", []string{nu.Name})
	cn := nu.Gecos
	if cn == "" {
		cn = nu.Name
	}
	add.Attribute("cn", []string{cn})
	add.Attribute("sn", []string{nu.Name})
	add.Attribute("uidNumber", []string{strconv.Itoa(uid)})
	add.Attribute("gidNumber", []string{strconv.Itoa(gid)})
	add.Attribute("homeDirectory", []string{home})
	add.Attribute("loginShell", []string{shell})
	if nu.Gecos != "" {
		add.Attribute("gecos", []string{nu.Gecos})
	}
	if err := d.conn.Add(add); err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
			return fmt.Errorf("user %s already exists (%s)", nu.Name, dn)
		}
		return fmt.Errorf("add %s: %w", dn, err)
	}
	return nil
}

// DeleteUser removes the user's entry and its memberUid in every group.
func (d *Dir) DeleteUser(name string) error {
	e, err := d.findUser(name)
	if err != nil {
		return err
	}
	groups, err := d.Groups()
	if err != nil {
		return err
	}
	for _, g := range groups {
		for _, m := range g.Members {
			if m == name {
				if err := d.RemoveMember(g.Name, name); err != nil {
					return err
				}
			}
		}
	}
	if err := d.conn.Del(ldap.NewDelRequest(e.DN, nil)); err != nil {
		return fmt.Errorf("delete %s: %w", e.DN, err)
	}
	return nil
}

// passwordModifyOID is the Password Modify extended operation (RFC 3062).
const passwordModifyOID = "1.3.6.1.4.1.4203.1.11.1"

// SupportsPasswordModify reads the rootDSE's supportedExtension.
func (d *Dir) SupportsPasswordModify() (bool, error) {
	req := ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"supportedExtension"}, nil)
	res, err := d.conn.Search(req)
	if err != nil {
		return false, fmt.Errorf("read the rootDSE: %w", err)
	}
	for _, e := range res.Entries {
		for _, v := range e.GetAttributeValues("supportedExtension") {
			if v == passwordModifyOID {
				return true, nil
			}
		}
	}
	return false, nil
}

// SetPassword sets the user's password with the Password Modify extended
// operation when the server offers it (a NAS hooks that operation to keep
// its SMB hashes in step), else by writing a salted SHA hash to
// userPassword. The password never appears in an error.
func (d *Dir) SetPassword(name, password string) (method string, err error) {
	if password == "" {
		return "", errors.New("empty password refused")
	}
	e, err := d.findUser(name)
	if err != nil {
		return "", err
	}
	ok, err := d.SupportsPasswordModify()
	if err != nil {
		return "", err
	}
	if ok && !d.noPasswordModify {
		if _, err := d.conn.PasswordModify(ldap.NewPasswordModifyRequest(e.DN, "", password)); err != nil {
			return "", fmt.Errorf("password modify for %s: %w", e.DN, err)
		}
		method = "password modify extended operation"
	} else {
		hash, err := HashSSHA(password)
		if err != nil {
			return "", err
		}
		mod := ldap.NewModifyRequest(e.DN, nil)
		mod.Replace("userPassword", []string{hash})
		if err := d.conn.Modify(mod); err != nil {
			return "", fmt.Errorf("set userPassword of %s: %w", e.DN, err)
		}
		method = "userPassword {SSHA} (server lacks the password modify operation)"
	}
	// shadowLastChange counts days since 1970; SSSD's shadow policy reads it.
	mod := ldap.NewModifyRequest(e.DN, nil)
	mod.Replace("shadowLastChange", []string{strconv.FormatInt(time.Now().Unix()/86400, 10)})
	if err := d.conn.Modify(mod); err != nil {
		return method, fmt.Errorf("password set, but updating shadowLastChange of %s failed: %w", e.DN, err)
	}
	return method, nil
}

// HomeInstructions is what the NAS admin must run for a new user's home:
// herd does not mount the NAS, so it cannot create the directory itself.
func (d *Dir) HomeInstructions(u *User) string {
	export := d.S.NASHomes
	where := "the NAS"
	if d.S.NASAddress != "" {
		where = "the NAS (" + d.S.NASAddress + ")"
	}
	if export == "" {
		export = "<homes export>"
	}
	dir := path.Join(export, u.Name)
	return fmt.Sprintf("herd does not mount the NAS; create the home directory on %s, in the homes export (nas.homes), as root:\n"+
		"  mkdir %s\n  chown %d:%d %s\n  chmod 700 %s\n"+
		"Nodes mount it at %s.\n", where, dir, u.UID, u.GID, dir, dir, u.Home)
}

// CreateHome makes the user's home in exportRoot (the NAS homes export as
// mounted on this machine): NAME with mode 0700 owned by uid:gid. An
// existing directory is left alone and reported, never re-owned.
func CreateHome(exportRoot string, u *User) (string, error) {
	st, err := os.Stat(exportRoot)
	if err != nil {
		return "", fmt.Errorf("homes export %s: %w", exportRoot, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("homes export %s is not a directory", exportRoot)
	}
	dir := filepath.Join(exportRoot, u.Name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return dir, fmt.Errorf("%s already exists; left as it is (check its owner is %d:%d)", dir, u.UID, u.GID)
		}
		return dir, fmt.Errorf("create home: %w", err)
	}
	// Mkdir applies the umask; the mode must be exactly 0700.
	if err := os.Chmod(dir, 0o700); err != nil {
		os.Remove(dir)
		return dir, fmt.Errorf("create home: %w", err)
	}
	if err := os.Chown(dir, u.UID, u.GID); err != nil {
		os.Remove(dir)
		return dir, fmt.Errorf("create home: %w", err)
	}
	return dir, nil
}
