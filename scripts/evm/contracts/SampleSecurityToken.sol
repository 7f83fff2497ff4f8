// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {IERC165} from "@openzeppelin/contracts/utils/introspection/IERC165.sol";
import {SampleIdentityRegistry} from "./SampleIdentityRegistry.sol";

/// @notice ERC-8056 "Scaled UI Amount" core interface, current draft text (3-argument event).
interface IScaledUIAmount {
    event UIMultiplierUpdated(uint256 oldMultiplier, uint256 newMultiplier, uint256 effectiveAtTimestamp);

    function uiMultiplier() external view returns (uint256);
}

/// @title Sample security token for the indexer's development chain.
/// @notice Behaves like an ERC-3643 (T-REX 4.1.6) token for everything a cap table sees, plus an
///         ERC-8056 display multiplier for stock splits. It emits only events of real standards, with
///         T-REX's exact parameter names and indexed-ness, so a decoder written for real tokens works.
///         balanceOf and every Transfer stay RAW; a split changes only uiMultiplier().
contract SampleSecurityToken is ERC20, Pausable, IERC165, IScaledUIAmount {
    // ERC-3643 token events (signatures from the T-REX 4.1.6 IToken ABI).
    event UpdatedTokenInformation(
        string indexed _newName,
        string indexed _newSymbol,
        uint8 _newDecimals,
        string _newVersion,
        address indexed _newOnchainID
    );
    event IdentityRegistryAdded(address indexed _identityRegistry);
    event ComplianceAdded(address indexed _compliance);
    event RecoverySuccess(address indexed _lostWallet, address indexed _newWallet, address indexed _investorOnchainID);
    event AddressFrozen(address indexed _userAddress, bool indexed _isFrozen, address indexed _owner);
    event TokensFrozen(address indexed _userAddress, uint256 _amount);
    event TokensUnfrozen(address indexed _userAddress, uint256 _amount);
    // ERC-3643 AgentRole event.
    event AgentAdded(address indexed _agent);

    string public constant version = "1.0.0";
    uint256 private constant MULTIPLIER_ONE = 1e18;

    address public immutable owner;
    SampleIdentityRegistry public immutable identityRegistry;
    address public immutable compliance;
    address public immutable onchainID; // the token's own ONCHAINID: none in this sample

    string private _tokenName;
    string private _tokenSymbol;
    uint8 private immutable _tokenDecimals;

    mapping(address => bool) public isAgent;
    mapping(address => bool) private _frozen;
    mapping(address => uint256) private _frozenTokens;

    // ERC-8056: the multiplier in force before `_effectiveAt`, and the one in force from it on.
    uint256 private _previousMultiplier = MULTIPLIER_ONE;
    uint256 private _nextMultiplier = MULTIPLIER_ONE;
    uint256 private _effectiveAt;

    modifier onlyAgent() {
        require(isAgent[msg.sender], "SampleSecurityToken: caller is not an agent");
        _;
    }

    /// @dev Emits the same three binding events as T-REX `Token.init`, in the same order.
    constructor(
        string memory name_,
        string memory symbol_,
        uint8 decimals_,
        SampleIdentityRegistry registry_,
        address compliance_
    ) ERC20(name_, symbol_) {
        require(bytes(name_).length > 0 && bytes(symbol_).length > 0, "SampleSecurityToken: empty name or symbol");
        require(decimals_ <= 18, "SampleSecurityToken: decimals above 18");
        require(
            address(registry_) != address(0) && compliance_ != address(0),
            "SampleSecurityToken: zero registry or compliance"
        );
        owner = msg.sender;
        _tokenName = name_;
        _tokenSymbol = symbol_;
        _tokenDecimals = decimals_;
        identityRegistry = registry_;
        compliance = compliance_;
        emit IdentityRegistryAdded(address(registry_));
        emit ComplianceAdded(compliance_);
        emit UpdatedTokenInformation(name_, symbol_, decimals_, version, address(0));
        isAgent[msg.sender] = true;
        emit AgentAdded(msg.sender);
    }

    // ---------------------------------------------------------------- views

    function name() public view override returns (string memory) {
        return _tokenName;
    }

    function symbol() public view override returns (string memory) {
        return _tokenSymbol;
    }

    function decimals() public view override returns (uint8) {
        return _tokenDecimals;
    }

    function isFrozen(address user) external view returns (bool) {
        return _frozen[user];
    }

    function getFrozenTokens(address user) external view returns (uint256) {
        return _frozenTokens[user];
    }

    /// @notice ERC-8056: the multiplier in force at the current block's timestamp (1e18 = 1.0).
    function uiMultiplier() public view returns (uint256) {
        return block.timestamp >= _effectiveAt ? _nextMultiplier : _previousMultiplier;
    }

    function newUIMultiplier() external view returns (uint256) {
        return _nextMultiplier;
    }

    function effectiveAt() external view returns (uint256) {
        return _effectiveAt;
    }

    function balanceOfUI(address account) external view returns (uint256) {
        return (balanceOf(account) * uiMultiplier()) / MULTIPLIER_ONE;
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == type(IERC165).interfaceId || interfaceId == type(IScaledUIAmount).interfaceId;
    }

    // ------------------------------------------------------ holder transfers

    function transfer(address to, uint256 amount) public override returns (bool) {
        _checkHolderTransfer(msg.sender, to, amount);
        return super.transfer(to, amount);
    }

    function transferFrom(address from, address to, uint256 amount) public override returns (bool) {
        _checkHolderTransfer(from, to, amount);
        return super.transferFrom(from, to, amount);
    }

    /// @dev The T-REX transfer rules, minus the modular compliance call.
    function _checkHolderTransfer(address from, address to, uint256 amount) private view {
        _requireNotPaused();
        require(!_frozen[from] && !_frozen[to], "SampleSecurityToken: wallet is frozen");
        require(identityRegistry.isVerified(to), "SampleSecurityToken: recipient not verified");
        require(amount <= balanceOf(from) - _frozenTokens[from], "SampleSecurityToken: amount exceeds free balance");
    }

    // ------------------------------------------------------ agent operations

    function addAgent(address agent) external {
        require(msg.sender == owner, "SampleSecurityToken: caller is not the owner");
        require(agent != address(0) && !isAgent[agent], "SampleSecurityToken: bad agent");
        isAgent[agent] = true;
        emit AgentAdded(agent);
    }

    /// @notice Issuance. Allowed while paused, as in T-REX.
    function mint(address to, uint256 amount) external onlyAgent {
        require(identityRegistry.isVerified(to), "SampleSecurityToken: recipient not verified");
        _mint(to, amount);
    }

    /// @notice Redemption. Eats into frozen tokens last, unfreezing them first (T-REX behaviour).
    function burn(address user, uint256 amount) external onlyAgent {
        require(balanceOf(user) >= amount, "SampleSecurityToken: amount exceeds balance");
        _unfreezeShortfall(user, amount);
        _burn(user, amount);
    }

    function forcedTransfer(address from, address to, uint256 amount) external onlyAgent returns (bool) {
        _forcedTransfer(from, to, amount);
        return true;
    }

    function pause() external onlyAgent {
        _pause();
    }

    function unpause() external onlyAgent {
        _unpause();
    }

    function setAddressFrozen(address user, bool freeze) public onlyAgent {
        _frozen[user] = freeze;
        emit AddressFrozen(user, freeze, msg.sender);
    }

    function freezePartialTokens(address user, uint256 amount) external onlyAgent {
        _freezeTokens(user, amount);
    }

    function unfreezePartialTokens(address user, uint256 amount) external onlyAgent {
        require(_frozenTokens[user] >= amount, "SampleSecurityToken: amount exceeds frozen tokens");
        _frozenTokens[user] -= amount;
        emit TokensUnfrozen(user, amount);
    }

    /// @notice Moves a lost wallet's whole position to a new wallet of the same investor, with the
    ///         T-REX event sequence: IdentityRegistered(new), TokensUnfrozen(lost), Transfer(lost->new),
    ///         TokensFrozen(new), [AddressFrozen(new)], IdentityRemoved(lost), RecoverySuccess.
    function recoveryAddress(address lostWallet, address newWallet, address investorOnchainID)
        external
        onlyAgent
        returns (bool)
    {
        uint256 balance = balanceOf(lostWallet);
        require(balance != 0, "SampleSecurityToken: no tokens to recover");
        require(
            identityRegistry.identity(lostWallet) == investorOnchainID,
            "SampleSecurityToken: onchainID does not own the lost wallet"
        );
        uint256 frozenTokens = _frozenTokens[lostWallet];
        identityRegistry.registerIdentity(newWallet, investorOnchainID, identityRegistry.investorCountry(lostWallet));
        _forcedTransfer(lostWallet, newWallet, balance);
        if (frozenTokens > 0) {
            _freezeTokens(newWallet, frozenTokens);
        }
        if (_frozen[lostWallet]) {
            setAddressFrozen(newWallet, true);
        }
        identityRegistry.deleteIdentity(lostWallet);
        emit RecoverySuccess(lostWallet, newWallet, investorOnchainID);
        return true;
    }

    function setName(string calldata newName) external onlyAgent {
        require(bytes(newName).length > 0, "SampleSecurityToken: empty name");
        _tokenName = newName;
        emit UpdatedTokenInformation(_tokenName, _tokenSymbol, _tokenDecimals, version, onchainID);
    }

    function setSymbol(string calldata newSymbol) external onlyAgent {
        require(bytes(newSymbol).length > 0, "SampleSecurityToken: empty symbol");
        _tokenSymbol = newSymbol;
        emit UpdatedTokenInformation(_tokenName, _tokenSymbol, _tokenDecimals, version, onchainID);
    }

    /// @notice ERC-8056 split / reverse split. An `effectiveAtTimestamp` at or before the current
    ///         block makes it effective immediately; a later one schedules it. Scheduling again
    ///         before maturity replaces the pending value (old = the multiplier in force now).
    function setUIMultiplier(uint256 newMultiplier, uint256 effectiveAtTimestamp) external onlyAgent {
        require(newMultiplier > 0, "SampleSecurityToken: multiplier must be positive");
        uint256 oldMultiplier = uiMultiplier();
        _previousMultiplier = oldMultiplier;
        _nextMultiplier = newMultiplier;
        _effectiveAt = effectiveAtTimestamp;
        emit UIMultiplierUpdated(oldMultiplier, newMultiplier, effectiveAtTimestamp);
    }

    // ------------------------------------------------------------- internals

    function _forcedTransfer(address from, address to, uint256 amount) private {
        require(balanceOf(from) >= amount, "SampleSecurityToken: amount exceeds balance");
        require(identityRegistry.isVerified(to), "SampleSecurityToken: recipient not verified");
        _unfreezeShortfall(from, amount);
        _transfer(from, to, amount);
    }

    /// @dev When an agent moves more than the free balance, the difference is unfrozen first.
    function _unfreezeShortfall(address user, uint256 amount) private {
        uint256 free = balanceOf(user) - _frozenTokens[user];
        if (amount > free) {
            uint256 shortfall = amount - free;
            _frozenTokens[user] -= shortfall;
            emit TokensUnfrozen(user, shortfall);
        }
    }

    function _freezeTokens(address user, uint256 amount) private {
        require(balanceOf(user) >= _frozenTokens[user] + amount, "SampleSecurityToken: amount exceeds balance");
        _frozenTokens[user] += amount;
        emit TokensFrozen(user, amount);
    }
}
