// Evergreen for C++17: a header-only RAII wrapper over the C ABI (include/evergreen.h).
//
//   evergreen::Updater updater(config_json);
//   updater.startup();
//   if (auto offer = updater.check()) {
//       updater.download(*offer, [](uint64_t, uint64_t) { return false; });
//       updater.install(*offer);
//       updater.activate();
//   }
//
// Every call blocks, runs callbacks on the calling thread, and throws evergreen::Error
// when the C call fails. No exception ever unwinds through the C library: the callback
// trampolines catch everything (see download() and on_event()).
#ifndef EVERGREEN_HPP
#define EVERGREEN_HPP

#include "evergreen.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace evergreen {

/// A failed call: `status()` is the C status number, `kind()` its stable name
/// ("signature", "cancelled", …, the same as the CLI's `error[<kind>]`), `what()` the
/// library's message, which says what was expected and what was found.
class Error : public std::runtime_error {
public:
    Error(evg_status status, const std::string &message)
        : std::runtime_error(message), status_(status), kind_(evg_status_name(status)) {}

    /// The C status number.
    evg_status status() const noexcept { return status_; }
    /// The stable kind name.
    const std::string &kind() const noexcept { return kind_; }

private:
    evg_status status_;
    std::string kind_;
};

namespace detail {

/// Throws Error for a failed status, with this thread's last message from the library.
inline void check(evg_status status) {
    if (status == EVG_OK) {
        return;
    }
    const char *message = evg_last_error_message();
    throw Error(status, message ? message : "(no detail)");
}

inline std::string str(const char *s) { return s ? std::string(s) : std::string(); }

inline std::optional<std::string> opt_str(const char *s) {
    return s ? std::optional<std::string>(s) : std::nullopt;
}

/// `s` for C, which reads up to the first NUL: one inside would silently cut it short.
inline const char *text(const std::string &s, const char *name) {
    auto nul = s.find('\0');
    if (nul != std::string::npos) {
        throw Error(EVG_CONFIG, std::string("argument ") + name +
                                    ": expected text without NUL, found one at offset " +
                                    std::to_string(nul));
    }
    return s.c_str();
}

inline const char *c_str_or_null(const std::optional<std::string> &s, const char *name) {
    return s ? text(*s, name) : nullptr;
}

/// Takes ownership of a string the library handed over.
inline std::string take(char *s) {
    std::unique_ptr<char, decltype(&evg_string_free)> owned(s, &evg_string_free);
    return str(owned.get());
}

struct OfferFree {
    void operator()(evg_offer *o) const noexcept { evg_offer_free(o); }
};

struct UpdaterFree {
    void operator()(evg_updater *u) const noexcept { evg_updater_free(u); }
};

}  // namespace detail

/// One of the two slots.
enum class Slot { none = EVG_SLOT_NONE, a = EVG_SLOT_A, b = EVG_SLOT_B };

/// "a", "b" or "none".
inline const char *slot_name(Slot s) noexcept {
    switch (s) {
    case Slot::a: return "a";
    case Slot::b: return "b";
    default: return "none";
    }
}

/// What an update does to a component.
enum class ComponentOp {
    added = EVG_COMPONENT_ADDED,
    removed = EVG_COMPONENT_REMOVED,
    modified = EVG_COMPONENT_MODIFIED,
    unchanged = EVG_COMPONENT_UNCHANGED,
};

/// One line of an offer's component diff.
struct Component {
    std::string name;
    ComponentOp op;
    /// The installed version; empty when the component is added.
    std::optional<std::string> from;
    /// The offered version; empty when the component is removed.
    std::optional<std::string> to;
};

/// A release offered to this device (from Updater::check). Move-only; frees the C offer.
/// A moved-from Offer holds no offer: every accessor, and passing it to
/// Updater::check_install, Updater::download or Updater::install, throws std::logic_error, as a moved-from
/// Updater does (not an Error from the library about a NULL the host never wrote).
class Offer {
public:
    /// Takes ownership of `offer` (not NULL).
    explicit Offer(evg_offer *offer) noexcept : offer_(offer) {}

    Offer(Offer &&) noexcept = default;
    Offer &operator=(Offer &&) noexcept = default;
    Offer(const Offer &) = delete;
    Offer &operator=(const Offer &) = delete;

    /// The offered version, e.g. "1.4.2".
    std::string version() const { return detail::str(evg_offer_version(get())); }
    /// The installed version, when known.
    std::optional<std::string> current() const { return detail::opt_str(evg_offer_current(get())); }
    /// The channel the release comes from.
    std::string channel() const { return detail::str(evg_offer_channel(get())); }
    /// The release notes (possibly empty).
    std::string notes() const { return detail::str(evg_offer_notes(get())); }
    /// A forced update: it can't be skipped. Throws std::logic_error after a move.
    bool critical() const { return evg_offer_critical(get()); }
    /// Older than the installed release. Throws std::logic_error after a move.
    bool downgrade() const { return evg_offer_downgrade(get()); }
    /// Bytes to download. Throws std::logic_error after a move.
    uint64_t download_size() const { return evg_offer_download_size(get()); }

    /// The component diff, sorted by name.
    std::vector<Component> components() const {
        std::vector<Component> out;
        const size_t n = evg_offer_component_count(get());
        out.reserve(n);
        for (size_t i = 0; i < n; ++i) {
            evg_component c{};
            detail::check(evg_offer_component(get(), i, &c));
            out.push_back(Component{detail::str(c.name), static_cast<ComponentOp>(c.op),
                                    detail::opt_str(c.from), detail::opt_str(c.to)});
        }
        return out;
    }

    /// The offer as `evergreen check --json` prints it, less the CLI's `target_released`
    /// and `held_back`.
    std::string json() const {
        char *s = nullptr;
        detail::check(evg_offer_json(get(), &s));
        return detail::take(s);
    }

    /// The C handle, still owned by this object; throws std::logic_error after a move.
    /// The C accessors read NULL as an empty offer (version "", no components), so a
    /// moved-from Offer would otherwise pass for a real one.
    const evg_offer *get() const {
        if (!offer_) {
            throw std::logic_error("evergreen::Offer: used after it was moved from");
        }
        return offer_.get();
    }

private:
    std::unique_ptr<evg_offer, detail::OfferFree> offer_;
};

/// What Updater::startup found.
struct Startup {
    enum class Kind {
        normal = EVG_STARTUP_NORMAL,
        trial = EVG_STARTUP_TRIAL,
        rolled_back = EVG_STARTUP_ROLLED_BACK,
    };
    Kind kind;
    /// The slot on trial, or the slot now primary after a rollback.
    Slot slot;
    /// Starts left to confirm the trial slot.
    uint32_t tries_left;
    /// The slot given up by a rollback.
    Slot rolled_back_from;
    /// The slot the selector names once the step is done (Slot::none when nothing was
    /// ever activated). From startup_for_launcher, the slot to start now, by its own path
    /// (<root>/slots/a/... or <root>/slots/b/...), not through current.
    Slot start;
};

/// What Updater::activate did.
struct Activation {
    /// False when the deploy policy holds the update back (nothing changed).
    bool activated;
    /// The new primary slot, Slot::none when deferred.
    Slot slot;
    /// When deferred: the Unix time it may go ahead, or -1 when unknown; 0 when activated.
    int64_t deferred_until;
};

/// Download progress: (done, total) bytes. Return true to cancel.
using Progress = std::function<bool(uint64_t done, uint64_t total)>;
/// An event as one JSON object, e.g. {"event":"confirmed","slot":"b",…}.
using EventHandler = std::function<void(const std::string &event_json)>;

namespace detail {

/// The state of one progress-reporting call. An exception thrown by the host's callback
/// cancels the operation and is rethrown once the C call has returned.
struct ProgressCall {
    const Progress *fn;
    std::exception_ptr error;

    static int trampoline(void *user, uint64_t done, uint64_t total) noexcept {
        auto *self = static_cast<ProgressCall *>(user);
        try {
            return (*self->fn)(done, total) ? 1 : 0;
        } catch (...) {
            self->error = std::current_exception();
            return 1;
        }
    }

    evg_progress_cb callback() const noexcept { return *fn ? &trampoline : nullptr; }

    void finish(evg_status status) const {
        if (error) {
            std::rethrow_exception(error);
        }
        check(status);
    }
};

/// What C is given for an Updater's event handler: a heap cell holding a shared
/// reference. The trampoline takes a reference of its own before it calls the handler, so
/// an Updater destroyed from inside that handler frees the handler only once it returns.
using HandlerCell = std::shared_ptr<EventHandler>;

inline void event_trampoline(void *user, const char *event_json) noexcept {
    try {
        const HandlerCell keep = *static_cast<const HandlerCell *>(user);
        (*keep)(str(event_json));
    } catch (...) {
        // An event is a notification: a failing handler must not break the update, and
        // nothing may unwind into C.
    }
}

}  // namespace detail

/// An updater for one product installation. Move-only; frees the C handle.
class Updater {
public:
    /// Creates an updater from the JSON config (DESIGN §7.1, the CLI's --config file).
    /// Throws Error with kind "config" when it is invalid.
    explicit Updater(const std::string &config_json) {
        evg_updater *u = nullptr;
        detail::check(evg_updater_new(detail::text(config_json, "config_json"), &u));
        updater_.reset(u);
    }

    /// Creates an updater with host-supplied parts (evg_updater_new_with_hooks): a
    /// transport in place of HTTP(S) and files (an app's own HTTP stack, with its proxy
    /// and certificate settings), a boot selector, an event callback. `hooks` and the
    /// structs it points to are copied; their `user` pointers must stay valid until this
    /// Updater is destroyed (and a call running on it then has returned). A handler set
    /// with on_event() replaces `hooks.on_event`. Throws Error with kind "config" when the
    /// config or a `struct_size` is wrong.
    Updater(const std::string &config_json, const evg_hooks &hooks) {
        evg_updater *u = nullptr;
        detail::check(
            evg_updater_new_with_hooks(detail::text(config_json, "config_json"), &hooks, &u));
        updater_.reset(u);
    }

    Updater(Updater &&) noexcept = default;
    /// Frees this updater first (which waits for its running callbacks), and only then
    /// its handlers, as the destructor does: a defaulted move would replace the handlers
    /// before the free, under a callback another thread may be running.
    Updater &operator=(Updater &&other) noexcept {
        if (this != &other) {
            updater_.reset();
            events_ = std::move(other.events_);
            retired_ = std::move(other.retired_);
            updater_ = std::move(other.updater_);
        }
        return *this;
    }
    Updater(const Updater &) = delete;
    Updater &operator=(const Updater &) = delete;

    /// Sends every event to `handler` (an empty function stops events). The updater
    /// keeps its own copy, so `handler` may be a temporary; it runs on the thread of the
    /// call that emits the event, and whatever it throws is swallowed. The handler may
    /// destroy this Updater (say, on "rolled_back"): it stays alive until it returns, and
    /// the running call ends without further events (a download in it with "cancelled").
    void on_event(EventHandler handler) {
        auto next = handler ? std::make_unique<detail::HandlerCell>(
                                  std::make_shared<EventHandler>(std::move(handler)))
                            : nullptr;
        // Room for the old handler first: once C holds `next`, nothing may throw before
        // `next` is kept (a bad_alloc would free it under C).
        retired_.reserve(retired_.size() + 1);
        detail::check(evg_set_event_callback(get(), next ? &detail::event_trampoline : nullptr,
                                             next.get()));
        // A call on another thread may still be delivering one event to the old handler
        // (evg_set_event_callback's contract), so it is retired, not freed, until the
        // Updater goes. Handlers are set a few times in a program's life.
        if (events_) {
            retired_.push_back(std::move(events_));
        }
        events_ = std::move(next);
    }

    /// Stops the calls running on this updater on other threads (evg_updater_halt): no
    /// more event or progress callbacks, a download cancelled at its next chunk, and a
    /// check or a download waiting to retry a failing server, or for the work lock, ends
    /// at once with Error "cancelled" (a request under way ends by its own timeouts). For
    /// a host shutting down: halt(), join the threads that use the updater, then destroy
    /// it; destroying it while another thread is in a call is a race. A halted updater
    /// serves no more updates.
    void halt() { evg_updater_halt(get()); }

    /// The startup step: call it early on every start, from inside the app. A launcher
    /// calls startup_for_launcher instead.
    Startup startup() { return startup_with(evg_startup); }

    /// The startup step for a launcher, which runs the step and then starts the slot in
    /// the result's `start`, by its own path (<root>/slots/a/... or <root>/slots/b/...):
    /// `current` may move under an activation in another process meanwhile. After a power
    /// cut between an activation's commit and its switch, it counts the start about to be
    /// made as the trial's (see evg_startup_for_launcher).
    Startup startup_for_launcher() { return startup_with(evg_startup_for_launcher); }

    /// The update for this device, or nothing when up to date.
    std::optional<Offer> check() { return check({}, {}); }

    /// Checks `channel` (empty: the device's) for the newest update or for exactly
    /// `version` (newer or older).
    std::optional<Offer> check(const std::optional<std::string> &channel,
                               const std::optional<std::string> &version) {
        evg_offer *o = nullptr;
        detail::check(evg_check_version(get(), detail::c_str_or_null(channel, "channel"),
                                        detail::c_str_or_null(version, "version"), &o));
        if (o == nullptr) {
            return std::nullopt;
        }
        return Offer(o);
    }

    /// check() when the device's poll schedule says a check is due, else nothing and no
    /// request: the call for a host's timer, which may call it as often as it likes (the
    /// schedule keeps a fleet's polls spread). Nothing also when the check found no update;
    /// `checked` (may be null) says whether the server was asked. next_check() says when
    /// to call again.
    std::optional<Offer> check_if_due(bool *checked = nullptr) {
        evg_offer *o = nullptr;
        detail::check(evg_check_if_due(get(), &o, checked));
        if (o == nullptr) {
            return std::nullopt;
        }
        return Offer(o);
    }

    /// When the next check is due, in seconds since the Unix epoch: the last check plus the
    /// poll interval with this device's jitter, later after failed checks or when a server
    /// asked (Retry-After); now or earlier when the device never checked. The same on every
    /// call until a check or a failure moves it.
    std::int64_t next_check() {
        std::int64_t when = 0;
        detail::check(evg_next_check(get(), &when));
        return when;
    }

    /// Throws now the Error install() would throw for `offer` with the device as it is (a
    /// trial under way: "invalid_state"; below the security floor: "security_floor"),
    /// touching nothing. Call it before download() when the download is meant for an
    /// install, so that a release is not fetched only to be refused. A moved-from `offer`
    /// throws std::logic_error.
    void check_install(const Offer &offer) {
        detail::check(evg_check_install(get(), offer.get()));
    }

    /// Downloads and verifies what `offer` needs. `progress` (may be empty) returning
    /// true cancels: Error with kind "cancelled", and the next call resumes. An exception
    /// thrown by `progress` cancels too and is rethrown here. `progress` is used by
    /// reference: it must outlive the call (a temporary argument does). A moved-from
    /// `offer` throws std::logic_error before anything is downloaded.
    void download(const Offer &offer, const Progress &progress = {}) {
        detail::ProgressCall call{&progress, nullptr};
        call.finish(evg_download(get(), offer.get(), call.callback(), &call));
    }

    /// Writes the downloaded `offer` into the inactive slot. A moved-from `offer` throws
    /// std::logic_error.
    void install(const Offer &offer) { detail::check(evg_install(get(), offer.get())); }

    /// Makes the installed slot primary, on trial, if the deploy policy allows it now
    /// (always with `force`).
    Activation activate(bool force = false) {
        evg_activation a{};
        detail::check(evg_activate(get(), force ? 1 : 0, &a));
        return Activation{a.activated, static_cast<Slot>(a.slot), a.deferred_until};
    }

    /// activate() of a release staged in the inactive slot, which goes ahead once the deploy
    /// policy lets it (a maintenance window, an `at` time): for a host's timer beside
    /// check_if_due(). Nothing when no release is staged, and under `download_only`, which
    /// waits for the host's own activate().
    std::optional<Activation> activate_if_due() {
        evg_activation a{};
        bool staged = false;
        detail::check(evg_activate_if_due(get(), &a, &staged));
        if (!staged) {
            return std::nullopt;
        }
        return Activation{a.activated, static_cast<Slot>(a.slot), a.deferred_until};
    }

    /// Marks the slot on trial good (and raises the security floor).
    void confirm() { detail::check(evg_confirm(get())); }

    /// Goes back to the fallback slot now; returns the slot now primary.
    Slot rollback() {
        evg_slot slot = EVG_SLOT_NONE;
        detail::check(evg_rollback(get(), &slot));
        return static_cast<Slot>(slot);
    }

    /// Downloads the installed version again and installs it (repair); then activate().
    /// `progress` as for download().
    void reinstall(const Progress &progress = {}) {
        detail::ProgressCall call{&progress, nullptr};
        call.finish(evg_reinstall(get(), call.callback(), &call));
    }

    /// Follows `channel` from now on.
    void set_channel(const std::string &channel) {
        detail::check(evg_set_channel(get(), detail::text(channel, "channel")));
    }

    /// Checks no longer offer `version` (unless it is critical); the status JSON lists it
    /// under "skipped", and unskip() takes it back.
    void skip(const std::string &version) {
        detail::check(evg_skip(get(), detail::text(version, "version")));
    }

    /// Checks may offer a skipped `version` again. false, and nothing changed, when it was
    /// not skipped.
    bool unskip(const std::string &version) {
        bool was_skipped = false;
        detail::check(evg_unskip(get(), detail::text(version, "version"), &was_skipped));
        return was_skipped;
    }

    /// The device's status as `evergreen status --json` prints it.
    std::string status_json() {
        char *s = nullptr;
        detail::check(evg_status_json(get(), &s));
        return detail::take(s);
    }

    /// The C handle, still owned by this object; throws after a move.
    evg_updater *get() const {
        if (!updater_) {
            throw std::logic_error("evergreen::Updater: used after it was moved from");
        }
        return updater_.get();
    }

private:
    Startup startup_with(evg_status (*step)(evg_updater *, evg_startup_result *)) {
        evg_startup_result r{};
        detail::check(step(get(), &r));
        return Startup{static_cast<Startup::Kind>(r.kind), static_cast<Slot>(r.slot), r.tries_left,
                       static_cast<Slot>(r.rolled_back_from), static_cast<Slot>(r.start)};
    }

    // Declared before updater_ so that it is destroyed after it: no event may reach a
    // freed handler while evg_updater_free runs.
    std::unique_ptr<detail::HandlerCell> events_;
    std::vector<std::unique_ptr<detail::HandlerCell>> retired_;
    std::unique_ptr<evg_updater, detail::UpdaterFree> updater_;
};

/// The version of the loaded library, e.g. "0.1.0".
inline std::string version() { return detail::str(evg_version()); }

}  // namespace evergreen

#endif  // EVERGREEN_HPP
