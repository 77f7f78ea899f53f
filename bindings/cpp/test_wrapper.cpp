// Tests of evergreen.hpp against the real library: repositories made with the real
// `evergreen` CLI and served over loopback HTTP by the run script.
//
//   test_wrapper EVERGREEN_CLI WORK_DIR BASE_URL
//
// WORK_DIR/www is what BASE_URL serves; each test makes its repositories under it and
// its devices under WORK_DIR/devices.

#include "evergreen.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

std::string g_cli, g_work, g_url;

struct Failure {
    std::string what;
};

#define EXPECT(cond)                                                                          \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::ostringstream msg_;                                                          \
            msg_ << __FILE__ << ":" << __LINE__ << ": expected " #cond;                        \
            throw Failure{msg_.str()};                                                        \
        }                                                                                     \
    } while (0)

#define EXPECT_EQ(a, b)                                                                       \
    do {                                                                                      \
        const auto &a_ = (a);                                                                 \
        const auto &b_ = (b);                                                                 \
        if (!(a_ == b_)) {                                                                    \
            std::ostringstream msg_;                                                          \
            msg_ << __FILE__ << ":" << __LINE__ << ": expected " #a " == " #b ", found "      \
                 << a_ << " vs " << b_;                                                       \
            throw Failure{msg_.str()};                                                        \
        }                                                                                     \
    } while (0)

/// Runs `f`, which must throw evergreen::Error of `kind`.
template <typename F>
void expect_error(const char *kind, F f, const char *where) {
    try {
        f();
    } catch (const evergreen::Error &e) {
        if (e.kind() != kind) {
            throw Failure{std::string(where) + ": expected error kind " + kind + ", found " +
                          e.kind() + ": " + e.what()};
        }
        if (std::string(e.what()).empty()) {
            throw Failure{std::string(where) + ": expected a message, found none"};
        }
        return;
    }
    throw Failure{std::string(where) + ": expected error kind " + kind + ", found success"};
}

#define EXPECT_ERROR(kind, stmt) expect_error(kind, [&] { stmt; }, #stmt)

/// Runs `f`, which must throw std::logic_error (a misuse of the wrapper, not an
/// evergreen::Error from the library) naming `type`.
template <typename F>
void expect_logic_error(const char *type, F f, const char *where) {
    try {
        f();
    } catch (const std::logic_error &e) {
        if (std::string(e.what()).find(type) == std::string::npos) {
            throw Failure{std::string(where) + ": expected a logic_error naming " + type +
                          ", found: " + e.what()};
        }
        return;
    } catch (const evergreen::Error &e) {
        throw Failure{std::string(where) + ": expected std::logic_error, found evergreen::Error[" +
                      e.kind() + "]: " + e.what()};
    }
    throw Failure{std::string(where) + ": expected std::logic_error, found success"};
}

#define EXPECT_LOGIC_ERROR(type, stmt) expect_logic_error(type, [&] { stmt; }, #stmt)

void sh(const std::string &cmd) {
    if (std::system(cmd.c_str()) != 0) {
        throw Failure{"command failed: " + cmd};
    }
}

std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string &path, const std::string &body) {
    std::ofstream(path, std::ios::binary) << body;
}

/// `n` bytes that do not compress, so the download spans many 64 KiB chunks.
std::string noise(size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto &c : s) {
        c = static_cast<char>(rng());
    }
    return s;
}

const char *kProduct = "com.acme.cppbind";

/// A signed repository made with the CLI, at WORK/www/NAME/repo.
struct Repo {
    std::string dir, repo, root_key, manifest_key;

    explicit Repo(const std::string &name) : dir(g_work + "/www/" + name), repo(dir + "/repo") {
        root_key = dir + "/keys/root.key";
        manifest_key = dir + "/keys/manifest.key";
        sh("mkdir -p '" + dir + "/keys' '" + dir + "/src'");
        cli("keygen --out '" + root_key + "'");
        cli("keygen --out '" + manifest_key + "'");
        cli("init '" + repo + "' --product " + kProduct + " --root-key '" + root_key +
            ".pub' --root-threshold 1 --manifest-key '" + manifest_key + ".pub' --sign '" +
            root_key + "'");
    }

    static void cli(const std::string &args) { sh("'" + g_cli + "' " + args + " >/dev/null"); }

    /// Publishes `version` with one file component `app` holding `body`.
    void release(const std::string &version, const std::string &body) {
        const std::string src = dir + "/src/" + version;
        sh("mkdir -p '" + src + "'");
        write_file(src + "/payload.bin", body);
        cli("release '" + repo + "' --channel stable --version " + version +
            " --target x86_64-linux --component 'app=" + src +
            "/payload.bin:file' --notes 'notes of " + version + "' --sign '" + manifest_key + "'");
    }

    std::string url() const { return g_url + "/" + repo.substr((g_work + "/www/").size()) + "/"; }
};

/// A device config (dir slots) that trusts `trusted` and talks to `server`.
struct Device {
    std::string base;
    std::string config;

    Device(const std::string &name, const Repo &trusted, const Repo &server)
        : base(g_work + "/devices/" + name) {
        sh("mkdir -p '" + base + "'");
        config = std::string("{\"product\":\"") + kProduct + "\",\"server\":\"" + server.url() +
                 "\",\"channel\":\"stable\",\"target\":\"x86_64-linux\",\"trust\":{\"root\":\"" +
                 trusted.repo + "/root/1.json\"},\"state_dir\":\"" + base +
                 "/state\",\"slots\":{\"kind\":\"dir\",\"root\":\"" + base +
                 "/app\"},\"device_id\":\"device-" + name +
                 "\",\"limits\":{\"retries\":1,\"retry_backoff_ms\":10}}";
    }
};

bool contains(const std::string &haystack, const std::string &needle) {
    return haystack.find(needle) != std::string::npos;
}

// ---- tests -------------------------------------------------------------------------

void full_update_with_trial_and_confirm() {
    Repo repo("full");
    const std::string body = noise(600 * 1024, 1);
    repo.release("1.0.0", body);
    Device dev("full", repo, repo);

    evergreen::Updater updater(dev.config);
    std::vector<std::string> events;
    updater.on_event([&events](const std::string &e) { events.push_back(e); });
    EXPECT(updater.startup().kind == evergreen::Startup::Kind::normal);

    auto offer = updater.check();
    EXPECT(offer.has_value());
    EXPECT_EQ(offer->version(), "1.0.0");
    EXPECT_EQ(offer->channel(), "stable");
    EXPECT_EQ(offer->notes(), "notes of 1.0.0");
    EXPECT(!offer->critical());
    EXPECT(!offer->downgrade());
    EXPECT(!offer->current().has_value());
    EXPECT_EQ(offer->download_size(), body.size());
    const auto components = offer->components();
    EXPECT_EQ(components.size(), 1u);
    EXPECT_EQ(components[0].name, "app");
    EXPECT(components[0].op == evergreen::ComponentOp::added);
    EXPECT(!components[0].from.has_value());
    EXPECT(components[0].to == std::optional<std::string>("1.0.0"));
    EXPECT(contains(offer->json(), "\"version\":\"1.0.0\""));

    std::vector<std::pair<uint64_t, uint64_t>> calls;
    updater.download(*offer, [&calls](uint64_t done, uint64_t total) {
        calls.emplace_back(done, total);
        return false;
    });
    EXPECT(calls.size() > 1);
    for (size_t i = 1; i < calls.size(); ++i) {
        EXPECT(calls[i - 1].first <= calls[i].first);
        EXPECT_EQ(calls[i].second, body.size());
    }
    EXPECT_EQ(calls.back().first, body.size());

    updater.install(*offer);
    const auto activation = updater.activate();
    EXPECT(activation.activated);
    EXPECT(activation.slot != evergreen::Slot::none);
    EXPECT_EQ(activation.deferred_until, 0);

    const auto started = updater.startup();
    EXPECT(started.kind == evergreen::Startup::Kind::trial);
    EXPECT(started.slot == activation.slot);
    EXPECT_EQ(started.tries_left, 2u);
    updater.confirm();

    const std::string slot = evergreen::slot_name(activation.slot);
    const std::string status = updater.status_json();
    EXPECT(contains(status, "\"primary\":\"" + slot + "\""));
    EXPECT(contains(status, "\"trial\":null"));
    EXPECT(contains(status, "\"" + slot + "\":{\"status\":\"good\",\"version\":\"1.0.0\"}"));
    EXPECT(read_file(dev.base + "/app/current/app/payload.bin") == body);
    EXPECT(!updater.check().has_value());

    for (const char *name : {"\"checked\"", "\"activated\"", "\"trial_boot\"", "\"confirmed\""}) {
        bool seen = false;
        for (const auto &e : events) {
            seen = seen || contains(e, std::string("\"event\":") + name);
        }
        if (!seen) {
            throw Failure{std::string("expected an event ") + name};
        }
    }
}

void rollback_returns_to_the_confirmed_slot() {
    Repo repo("rollback");
    repo.release("1.0.0", noise(100 * 1024, 2));
    Device dev("rollback", repo, repo);
    evergreen::Updater updater(dev.config);
    EXPECT_ERROR("invalid_state", updater.rollback());

    auto first = updater.check();
    updater.download(*first);
    updater.install(*first);
    const auto good = updater.activate().slot;
    updater.startup();
    updater.confirm();

    repo.release("1.1.0", noise(100 * 1024, 3));
    auto second = updater.check();
    EXPECT(second.has_value());
    EXPECT(second->current() == std::optional<std::string>("1.0.0"));
    EXPECT(second->components().at(0).op == evergreen::ComponentOp::modified);
    updater.download(*second);
    updater.install(*second);
    const auto trial = updater.activate(true).slot;
    EXPECT(trial != good);
    EXPECT(updater.rollback() == good);
    const std::string status = updater.status_json();
    const std::string bad = evergreen::slot_name(trial);
    EXPECT(contains(status, "\"" + bad + "\":{\"status\":\"bad\""));
}

// The power goes after an activation commits its trial and before `current` names the
// trial slot. A launcher runs the step, then starts what `current` names: the step for a
// launcher repairs the switch and counts this start as the trial's (startup() would count
// it as the old slot's, and the trial's confirm would be refused).
void a_launcher_counts_the_trial_after_an_activation_cut_short() {
    Repo repo("launcher");
    repo.release("1.0.0", noise(100 * 1024, 4));
    Device dev("launcher", repo, repo);
    const std::filesystem::path current = dev.base + "/app/current";
    evergreen::Slot trial_slot = evergreen::Slot::none;
    std::filesystem::path old, trial;
    {
        evergreen::Updater updater(dev.config);
        auto first = updater.check();
        updater.download(*first);
        updater.install(*first);
        updater.activate();
        EXPECT(updater.startup_for_launcher().kind == evergreen::Startup::Kind::trial);
        updater.confirm();
        old = std::filesystem::read_symlink(current);

        repo.release("1.1.0", noise(100 * 1024, 5));
        auto second = updater.check();
        updater.download(*second);
        updater.install(*second);
        trial_slot = updater.activate().slot;
        trial = std::filesystem::read_symlink(current);
        EXPECT(trial != old);
    }
    std::filesystem::remove(current);
    std::filesystem::create_directory_symlink(old, current);

    evergreen::Updater updater(dev.config);
    const auto started = updater.startup_for_launcher();
    EXPECT(started.kind == evergreen::Startup::Kind::trial);
    EXPECT(started.slot == trial_slot);
    EXPECT(started.start == trial_slot);
    EXPECT_EQ(started.tries_left, 2u);
    EXPECT(std::filesystem::read_symlink(current) == trial);
    updater.confirm();
}

/// The entries of `dir`, or none when it does not exist.
std::vector<std::string> entries(const std::string &dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto &e : std::filesystem::directory_iterator(dir, ec)) {
        names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

/// check_install() before the download: during a trial (started, starts left) the install
/// would be refused at the end, so it is refused now and nothing is downloaded; once the
/// trial is confirmed the same offer passes, and downloads and installs.
void check_install_refuses_an_install_during_a_trial() {
    Repo repo("precheck");
    repo.release("1.0.0", noise(100 * 1024, 9));
    Device dev("precheck", repo, repo);
    const std::string downloads = dev.base + "/state/downloads";
    evergreen::Updater updater(dev.config);
    auto first = updater.check();
    EXPECT(first.has_value());
    updater.check_install(*first);
    updater.download(*first);
    updater.install(*first);
    updater.activate();
    EXPECT(updater.startup().kind == evergreen::Startup::Kind::trial);

    repo.release("1.1.0", noise(100 * 1024, 10));
    auto second = updater.check();
    EXPECT(second.has_value());
    EXPECT_EQ(second->version(), "1.1.0");
    const auto before = entries(downloads);
    bool downloaded = false;
    try {
        updater.check_install(*second);
        updater.download(*second);
        downloaded = true;
    } catch (const evergreen::Error &e) {
        EXPECT_EQ(e.kind(), "invalid_state");
        EXPECT(contains(e.what(), "is on trial; confirm or roll back"));
    }
    EXPECT(!downloaded);
    EXPECT(entries(downloads) == before);

    updater.confirm();
    updater.check_install(*second);
    updater.download(*second);
    EXPECT(entries(downloads) != before);
    updater.install(*second);
    EXPECT(updater.activate().activated);
}

void bad_config_is_a_config_error() {
    for (const char *config : {"{not json", "{}", "{\"product\": 5}", ""}) {
        try {
            evergreen::Updater updater(config);
            throw Failure{std::string("expected a config error for ") + config};
        } catch (const evergreen::Error &e) {
            EXPECT_EQ(e.kind(), "config");
            EXPECT(e.status() == EVG_CONFIG);
        }
    }
}

/// C reads text up to its first NUL: the wrapper refuses one instead of passing a
/// shorter string ("preview\0x" would switch to "preview").
void a_nul_inside_an_argument_is_a_config_error() {
    Repo repo("nul");
    repo.release("1.0.0", noise(1024, 4));
    Device dev("nul", repo, repo);
    evergreen::Updater updater(dev.config);
    using namespace std::string_literals;
    EXPECT_ERROR("config", updater.set_channel("preview\0junk"s));
    EXPECT_ERROR("config", updater.skip("1.0.0\0junk"s));
    EXPECT_ERROR("config", updater.check(std::nullopt, "1.0.0\0junk"s));
    EXPECT(contains(updater.status_json(), "\"channel\":\"stable\""));
    EXPECT(!contains(updater.status_json(), "1.0.0\"]"));
    EXPECT(updater.check().has_value()); /* 1.0.0 was not skipped */
}

/// A release skipped by mistake is listed in the status and offered again once unskipped.
void a_skipped_release_can_be_offered_again() {
    Repo repo("unskip");
    repo.release("1.0.0", noise(1024, 5));
    Device dev("unskip", repo, repo);
    evergreen::Updater updater(dev.config);
    EXPECT(contains(updater.status_json(), "\"skipped\":[]"));
    updater.skip("1.0.0");
    EXPECT(contains(updater.status_json(), "\"skipped\":[\"1.0.0\"]"));
    EXPECT(!updater.check().has_value());
    EXPECT(updater.unskip("1.0.0"));
    EXPECT(!updater.unskip("1.0.0"));
    EXPECT(updater.check().has_value());
    EXPECT_ERROR("config", updater.unskip("1.0"));
}

/// A host's timer: the first call checks (the device never did), the next ones ask nothing
/// until the schedule's time (the channel moved away would fail a request); a failed check
/// puts the next one off too.
void check_if_due_asks_only_when_the_schedule_says() {
    Repo repo("due");
    repo.release("1.0.0", noise(1024, 6));
    Device dev("due", repo, repo);
    evergreen::Updater updater(dev.config);
    const auto now = static_cast<std::int64_t>(std::time(nullptr));
    EXPECT(updater.next_check() <= static_cast<std::int64_t>(std::time(nullptr)));
    bool checked = false;
    auto offer = updater.check_if_due(&checked);
    EXPECT(checked && offer.has_value() && offer->version() == "1.0.0");
    const auto due = updater.next_check();
    EXPECT(due >= now + 4 * 3600 && due <= now + 8 * 3600 + 60);
    sh("mv '" + repo.repo + "/channels/stable.json' '" + repo.repo + "/channels/stable.away'");
    EXPECT(!updater.check_if_due(&checked).has_value() && !checked);
    EXPECT(!updater.check_if_due().has_value());
    EXPECT(updater.next_check() == due);
    EXPECT_ERROR("not_found", updater.check());

    Repo impostor("due-impostor");
    impostor.release("6.6.6", noise(1024, 7));
    Device stranger("due-stranger", repo, impostor);
    evergreen::Updater refused(stranger.config);
    EXPECT_ERROR("signature", refused.check_if_due());
    EXPECT(refused.next_check() > static_cast<std::int64_t>(std::time(nullptr)));
    EXPECT(!refused.check_if_due(&checked).has_value() && !checked);
}

/// A host's timer activates a staged release once the deploy policy lets it go: nothing
/// when nothing is staged; deferred under an `at` time years away; at once without it.
void activate_if_due_waits_for_the_deploy_policy() {
    Repo repo("activate-due");
    repo.release("1.0.0", noise(1024, 8));
    Device dev("activate-due", repo, repo);
    std::string later = dev.config;
    later.insert(later.rfind('}'), ",\"deploy\":{\"policy\":\"at\",\"at\":\"2099-01-01T00:00:00Z\"}");
    {
        evergreen::Updater updater(later);
        EXPECT(!updater.activate_if_due().has_value());
        auto offer = updater.check();
        EXPECT(offer.has_value());
        updater.download(*offer);
        updater.install(*offer);
        auto deferred = updater.activate_if_due();
        EXPECT(deferred.has_value() && !deferred->activated &&
               deferred->deferred_until == 4070908800);
    }
    evergreen::Updater updater(dev.config);
    auto done = updater.activate_if_due();
    EXPECT(done.has_value() && done->activated && done->slot != evergreen::Slot::none);
    EXPECT(!updater.activate_if_due().has_value());
}

void untrusted_signer_is_a_signature_error() {
    Repo trusted("trusted");
    Repo impostor("impostor");
    impostor.release("6.6.6", noise(1024, 4));
    Device dev("impostor", trusted, impostor);
    evergreen::Updater updater(dev.config);
    EXPECT_ERROR("signature", updater.check());
    EXPECT(contains(updater.status_json(), "\"a\":{\"status\":\"empty\""));
}

void cancelled_download_then_a_second_completes() {
    Repo repo("cancel");
    const std::string body = noise(600 * 1024, 5);
    repo.release("1.0.0", body);
    Device dev("cancel", repo, repo);
    evergreen::Updater updater(dev.config);
    auto offer = updater.check();
    EXPECT(offer.has_value());

    int cancels = 0;
    EXPECT_ERROR("cancelled", updater.download(*offer, [&cancels](uint64_t done, uint64_t total) {
        ++cancels;
        return done < total;
    }));
    EXPECT_EQ(cancels, 1);

    uint64_t last = 0;
    updater.download(*offer, [&last](uint64_t done, uint64_t) {
        last = done;
        return false;
    });
    EXPECT_EQ(last, body.size());
    updater.install(*offer);
    EXPECT(updater.activate().activated);
}

void exceptions_never_cross_into_c() {
    Repo repo("throws");
    repo.release("1.0.0", noise(300 * 1024, 6));
    Device dev("throws", repo, repo);
    evergreen::Updater updater(dev.config);
    updater.on_event([](const std::string &) { throw std::runtime_error("from on_event"); });
    auto offer = updater.check();  // events thrown away, the check goes on
    EXPECT(offer.has_value());

    struct Boom {};
    bool caught = false;
    try {
        updater.download(*offer, [](uint64_t, uint64_t) -> bool { throw Boom{}; });
    } catch (const Boom &) {
        caught = true;
    }
    EXPECT(caught);
    updater.on_event({});
    updater.download(*offer);  // still usable, and resumes
    updater.install(*offer);
}

void handles_are_move_only() {
    static_assert(!std::is_copy_constructible_v<evergreen::Updater>);
    static_assert(!std::is_copy_assignable_v<evergreen::Updater>);
    static_assert(std::is_nothrow_move_constructible_v<evergreen::Updater>);
    static_assert(!std::is_copy_constructible_v<evergreen::Offer>);
    static_assert(std::is_nothrow_move_constructible_v<evergreen::Offer>);

    Repo repo("moves");
    repo.release("1.0.0", noise(1024, 7));
    Device dev("moves", repo, repo);
    evergreen::Updater a(dev.config);
    int events = 0;
    a.on_event([&events](const std::string &) { ++events; });
    evergreen::Updater b(std::move(a));
    EXPECT(b.check().has_value());
    EXPECT(events > 0);  // the handler moved with the handle
    bool refused = false;
    try {
        a.status_json();  // NOLINT(bugprone-use-after-move): that is the point
    } catch (const std::logic_error &) {
        refused = true;
    }
    EXPECT(refused);

    // Move assignment frees the updater it replaces, then takes the other's handler: the
    // replaced one, which had events, gets no more.
    int replaced = 0;
    evergreen::Updater c(dev.config);
    c.on_event([&replaced](const std::string &) { ++replaced; });
    EXPECT(c.check().has_value());
    EXPECT(replaced > 0);
    const int before = events, replaced_before = replaced;
    c = std::move(b);
    EXPECT(c.check().has_value());
    EXPECT(events > before);
    EXPECT(replaced == replaced_before);
}

// A moved-from Offer is no offer: it must not pass for one with empty fields (version "",
// no components), and handing it to download or install is the host's mistake, reported
// as one (std::logic_error, as for a moved-from Updater), not as a library error about a
// NULL argument the host never wrote.
void a_moved_from_offer_throws_on_use() {
    static_assert(std::is_nothrow_move_assignable_v<evergreen::Offer>);
    Repo repo("moved-offer");
    const std::string body = noise(4096, 10);
    repo.release("1.0.0", body);
    Device dev("moved-offer", repo, repo);
    evergreen::Updater updater(dev.config);
    auto checked = updater.check();
    EXPECT(checked.has_value());
    evergreen::Offer offer = std::move(*checked);
    const evergreen::Offer &gone = *checked;  // NOLINT(bugprone-use-after-move): the point

    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.version());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.current());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.channel());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.notes());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.critical());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.downgrade());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.download_size());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.components());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.json());
    EXPECT_LOGIC_ERROR("evergreen::Offer", gone.get());
    bool progressed = false;
    EXPECT_LOGIC_ERROR("evergreen::Offer", updater.download(gone, [&](uint64_t, uint64_t) {
        progressed = true;
        return false;
    }));
    EXPECT(!progressed);
    EXPECT_LOGIC_ERROR("evergreen::Offer", updater.install(gone));
    EXPECT_LOGIC_ERROR("evergreen::Offer", updater.check_install(gone));

    // The offer moved to is whole, and so is one move-assigned back.
    EXPECT_EQ(offer.version(), "1.0.0");
    *checked = std::move(offer);
    EXPECT_LOGIC_ERROR("evergreen::Offer", offer.version());
    EXPECT_EQ(checked->download_size(), body.size());
    updater.download(*checked);
    updater.install(*checked);
    EXPECT(updater.activate().activated);
}

// Move assignment while another thread's call is inside the replaced updater's event
// handler: the assignment waits until the handler returns (the C updater's free waits for
// running callbacks), the handler stays alive while it runs (valgrind checks), and the
// assigned updater works. An assignment that did not wait for the free would leave C
// calling into a freed handler cell: a crash.
void move_assignment_waits_for_a_handler_running_on_another_thread() {
    Repo repo("moving");
    repo.release("1.0.0", noise(1024, 9));
    Device dev("moving", repo, repo);
    evergreen::Updater a(dev.config);
    evergreen::Updater b(dev.config);
    std::mutex m;
    std::condition_variable cv;
    bool entered = false, released = false, intact = false;
    const std::string captured(64, 'y');  // on the heap, inside the handler's copy
    a.on_event([&, captured](const std::string &) {
        std::unique_lock<std::mutex> lock(m);
        if (entered) {
            return;  // only the first event waits
        }
        entered = true;
        cv.notify_all();
        cv.wait_for(lock, std::chrono::seconds(60), [&] { return released; });
        intact = captured == std::string(64, 'y');
    });
    std::thread caller([&a] {
        try {
            a.check();
        } catch (...) {
            // Freed during the call: its outcome is not what this test is about.
        }
    });
    bool in_handler = false;
    {
        std::unique_lock<std::mutex> lock(m);
        in_handler = cv.wait_for(lock, std::chrono::seconds(60), [&] { return entered; });
    }
    std::atomic<bool> moved{false};
    std::thread mover;
    bool moved_under_handler = false;
    if (in_handler) {
        mover = std::thread([&] {
            a = std::move(b);
            moved = true;
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        moved_under_handler = moved;
    }
    {
        std::lock_guard<std::mutex> lock(m);
        released = true;
    }
    cv.notify_all();
    if (mover.joinable()) {
        mover.join();
    }
    caller.join();
    // Checked only now: a failed check throws, and a joinable thread must not be left.
    EXPECT(in_handler);
    EXPECT(!moved_under_handler);
    EXPECT(moved);
    EXPECT(intact);
    EXPECT(a.check().has_value());  // `a` is now what `b` was
}

void an_updater_may_be_destroyed_by_its_own_event_handler() {
    Repo repo("destroyed");
    repo.release("1.0.0", noise(2048, 8));
    Device dev("destroyed", repo, repo);
    auto updater = std::make_unique<evergreen::Updater>(dev.config);
    int calls = 0;
    bool intact = false;
    const std::string captured(64, 'x');  // on the heap, inside the handler's copy
    updater->on_event([&updater, &calls, &intact, captured](const std::string &) {
        if (++calls > 1) {
            return;
        }
        updater.reset();  // destroys the Updater that owns this handler
        intact = captured == std::string(64, 'x');
    });
    auto offer = updater->check();  // the first event destroys it; the check still returns
    EXPECT(updater == nullptr);
    EXPECT_EQ(calls, 1);  // no event after the destruction
    EXPECT(intact);       // the handler was alive until it returned (valgrind checks too)
    EXPECT(offer.has_value());
}

/// A host transport (the app's own HTTP stack, in a real app): here URLs are file paths.
struct FileTransport {
    int gets = 0;
    int open = 0;

    static int get(void *user, const char *url, int64_t range_from, const char *,
                   evg_response *out) {
        auto *t = static_cast<FileTransport *>(user);
        ++t->gets;
        std::FILE *f = std::fopen(url, "rb");
        if (f == nullptr) {
            out->status = 404;
            out->content_length = 0;
            return 0;
        }
        // Whole files only (range_from is ignored): a 200 to a range request restarts the
        // download.
        (void)range_from;
        std::fseek(f, 0, SEEK_END);
        out->content_length = std::ftell(f);
        std::fseek(f, 0, SEEK_SET);
        out->status = 200;
        out->body = f;
        ++t->open;
        return 0;
    }
    static int read(void *, void *body, uint8_t *buf, size_t len, size_t *n) {
        *n = std::fread(buf, 1, len, static_cast<std::FILE *>(body));
        return std::ferror(static_cast<std::FILE *>(body)) ? EVG_NETWORK : 0;
    }
    static void close(void *user, void *body) {
        --static_cast<FileTransport *>(user)->open;
        std::fclose(static_cast<std::FILE *>(body));
    }
};

/// Hosts with their own HTTP stack plug it in as a transport (README, c-abi.md): the
/// wrapper takes the same hooks as evg_updater_new_with_hooks, and the whole update goes
/// through them.
void an_updater_with_the_hosts_own_transport() {
    Repo repo("hooks");
    repo.release("1.0.0", noise(300 * 1024, 7));
    Device dev("hooks", repo, repo);
    // The repository as a directory: every request reaches the transport as a path.
    const std::string config = std::string("{\"product\":\"") + kProduct + "\",\"server\":\"" +
                               repo.repo + "/\",\"target\":\"x86_64-linux\",\"trust\":{\"root\":\"" +
                               repo.repo + "/root/1.json\"},\"state_dir\":\"" + dev.base +
                               "/state\",\"slots\":{\"kind\":\"dir\",\"root\":\"" + dev.base +
                               "/app\"},\"device_id\":\"device-hooks\"}";
    FileTransport files;
    evg_transport transport{};
    transport.struct_size = sizeof transport;
    transport.user = &files;
    transport.get = &FileTransport::get;
    transport.read = &FileTransport::read;
    transport.close = &FileTransport::close;
    evg_hooks hooks{};
    hooks.struct_size = sizeof hooks;
    hooks.transport = &transport;
    {
        evergreen::Updater updater(config, hooks);
        std::vector<std::string> events;
        updater.on_event([&events](const std::string &e) { events.push_back(e); });
        auto offer = updater.check();
        EXPECT(offer.has_value());
        EXPECT_EQ(offer->version(), "1.0.0");
        updater.download(*offer);
        updater.install(*offer);
        EXPECT(updater.activate().activated);
        EXPECT(files.gets >= 3);  // the root walk, the channel, the blob
        EXPECT_EQ(files.open, 0);
        EXPECT(!events.empty());
    }
    EXPECT_ERROR("config", evergreen::Updater("{}", hooks));
    hooks.struct_size = 1;
    EXPECT_ERROR("config", evergreen::Updater(config, hooks));
}

/// A host shutting down while its update thread's check waits to retry a server that is
/// not there (the network is down): halt() from the main thread stops the check at once,
/// then the host joins the thread and destroys the Updater. Without it, the join waits for
/// every retry (1 + 2 + 4 s here).
void halt_stops_a_check_waiting_to_retry_on_another_thread() {
    Repo repo("halt");
    Device dev("halt", repo, repo);
    std::string config = dev.config;
    const std::string server = repo.url();
    config.replace(config.find(server), server.size(), "http://127.0.0.1:9/");  // refused
    config.replace(config.find("\"retries\":1,\"retry_backoff_ms\":10"),
                   std::string("\"retries\":1,\"retry_backoff_ms\":10").size(),
                   "\"retries\":3,\"retry_backoff_ms\":1000");
    evergreen::Updater updater(config);
    std::string kind;
    std::atomic<bool> done{false};
    std::thread worker([&] {
        try {
            updater.check();
            kind = "ok";
        } catch (const evergreen::Error &e) {
            kind = e.kind();
        }
        done = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // in the first back-off
    const auto halted_at = std::chrono::steady_clock::now();
    updater.halt();
    worker.join();
    const auto took = std::chrono::steady_clock::now() - halted_at;
    EXPECT(done);
    EXPECT_EQ(kind, "cancelled");
    EXPECT(took < std::chrono::seconds(1));
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 4) {
        std::cerr << "usage: test_wrapper EVERGREEN_CLI WORK_DIR BASE_URL\n";
        return 2;
    }
    g_cli = argv[1];
    g_work = argv[2];
    g_url = argv[3];
    const std::pair<const char *, void (*)()> tests[] = {
        {"full_update_with_trial_and_confirm", full_update_with_trial_and_confirm},
        {"rollback_returns_to_the_confirmed_slot", rollback_returns_to_the_confirmed_slot},
        {"a_launcher_counts_the_trial_after_an_activation_cut_short",
         a_launcher_counts_the_trial_after_an_activation_cut_short},
        {"check_install_refuses_an_install_during_a_trial",
         check_install_refuses_an_install_during_a_trial},
        {"bad_config_is_a_config_error", bad_config_is_a_config_error},
        {"a_nul_inside_an_argument_is_a_config_error", a_nul_inside_an_argument_is_a_config_error},
        {"a_skipped_release_can_be_offered_again", a_skipped_release_can_be_offered_again},
        {"check_if_due_asks_only_when_the_schedule_says",
         check_if_due_asks_only_when_the_schedule_says},
        {"activate_if_due_waits_for_the_deploy_policy",
         activate_if_due_waits_for_the_deploy_policy},
        {"untrusted_signer_is_a_signature_error", untrusted_signer_is_a_signature_error},
        {"cancelled_download_then_a_second_completes", cancelled_download_then_a_second_completes},
        {"exceptions_never_cross_into_c", exceptions_never_cross_into_c},
        {"handles_are_move_only", handles_are_move_only},
        {"a_moved_from_offer_throws_on_use", a_moved_from_offer_throws_on_use},
        {"move_assignment_waits_for_a_handler_running_on_another_thread",
         move_assignment_waits_for_a_handler_running_on_another_thread},
        {"an_updater_may_be_destroyed_by_its_own_event_handler",
         an_updater_may_be_destroyed_by_its_own_event_handler},
        {"an_updater_with_the_hosts_own_transport", an_updater_with_the_hosts_own_transport},
        {"halt_stops_a_check_waiting_to_retry_on_another_thread",
         halt_stops_a_check_waiting_to_retry_on_another_thread},
    };
    int failed = 0;
    for (const auto &[name, test] : tests) {
        try {
            test();
            std::cout << "ok   " << name << "\n";
        } catch (const Failure &f) {
            ++failed;
            std::cout << "FAIL " << name << ": " << f.what << "\n";
        } catch (const std::exception &e) {
            ++failed;
            std::cout << "FAIL " << name << ": unexpected exception: " << e.what() << "\n";
        }
    }
    const auto total = sizeof(tests) / sizeof(tests[0]);
    std::cout << (total - failed) << " passed, " << failed << " failed (evergreen "
              << evergreen::version() << ")\n";
    return failed == 0 ? 0 : 1;
}
